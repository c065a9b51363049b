"""What `hemocount count --ray` costs on one machine: fields/s local vs Ray, the overhead per field and per run,
the driver's own CPU per field, and the memory of each Ray process.

Usage:
    python benchmarks/ray_overhead.py [--sizes 50,250] [--repeat 2] [--json benchmarks/results/ray_overhead.json]

Both contenders are the real CLI in a fresh process (`python -m hemocount -q count FIELDS -o OUT`, and the same
with `--ray`, which starts a local Ray instance on this machine's cores and stops it), on the same generated
640x480 fields (benchmarks/count_speed.py's `make_fields`), interleaved: for each repeat, each size, local then
Ray. On one machine this measures Ray's overhead, not scaling: both runs share the same cores.

- fields/s: fields over the process's wall time (imports, model loading, Ray start-up included);
- per field: the marginal time of one more field, (wall(big) - wall(small)) / (big - small), and fixed: the
  wall time a run costs beyond that (start-up), both from the fastest repeat of each;
- driver CPU: run.json `execution.driver_cpu_seconds` (all the driver's threads while fields are counted: Ray
  Data's scheduler, taking in records, writing annotated JPEGs and the journal), solved from the two sizes as
  a share of a core for as long as the run lasts (the scheduler polls) plus a cost per field;
  `records_cpu_seconds` is the part spent taking in records;
- writes per field: run.json `timings_s.writes`, the wall time of the writer thread (annotated JPEG, journal
  entry; a local run also draws and encodes the JPEG there, a Ray run's workers do), over fields;
- memory: peak RSS of each process of the run's tree, sampled every 0.2 s, by role (driver, detector and
  classifier actors, decode workers, Ray's own daemons).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from count_speed import make_fields, subset  # the same fields as the speed benchmark

MODES = ("local", "ray")


def _tree(root: int) -> dict[int, str]:
    """pid -> role name of ``root`` and every live descendant."""
    parents, names = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        names[int(d.name)] = _role(cmd)
    found, frontier = {root}, {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return {p: names.get(p, "?") for p in found if p in names}


def _role(cmd: list[bytes]) -> str:
    first = cmd[0].decode(errors="replace").strip()
    if first.startswith("ray::"):  # Ray names its worker processes after what they run (and the running method)
        name = first.split()[0]
        return name[:name.rindex(")") + 1] if ")" in name else name
    text = b" ".join(cmd).decode(errors="replace")
    for daemon in ("gcs_server", "raylet", "dashboard/agent", "runtime_env/agent", "log_monitor", "monitor.py"):
        if daemon in text:
            return daemon
    return "driver" if "hemocount" in text else Path(first).name


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_cli(fields: Path, out: Path, mode: str) -> dict[str, Any]:
    """One `hemocount count` run: wall seconds, run.json and peak RSS by role (MiB; each process its own peak)."""
    cmd = [sys.executable, "-m", "hemocount", "-q", "count", str(fields), "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    peaks: dict[int, tuple[str, float]] = {}
    t = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd + (["--ray"] if mode == "ray" else []), stdout=subprocess.DEVNULL, stderr=err,
                                env=env, cwd=str(ROOT))
        while proc.poll() is None:
            for pid, role in _tree(proc.pid).items():
                rss = _rss_mib(pid)
                if rss > peaks.get(pid, ("", 0.0))[1]:
                    peaks[pid] = ("driver" if pid == proc.pid else role, rss)
            time.sleep(0.2)
        wall = time.perf_counter() - t
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"{mode} run failed on {fields}:\n{err.read().decode()[-3000:]}")
    by_role: dict[str, list[float]] = defaultdict(list)
    for role, rss in peaks.values():
        by_role[role].append(round(rss))
    return {"wall": wall, "run": json.loads((out / "run.json").read_text()), "rss": dict(by_role)}


def _linear(small: tuple[int, float], big: tuple[int, float]) -> tuple[float, float]:
    """Seconds per extra field and fixed seconds of the line through two (fields, wall) points."""
    per = (big[1] - small[1]) / (big[0] - small[0])
    return per, small[1] - per * small[0]


def _driver_cpu(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The driver's CPU as ``share * run seconds + per_field * fields``: Ray Data's scheduler polls for as long
    as the run lasts, taking in and writing records costs per field (two runs, two unknowns)."""
    import numpy as np

    n = sorted(runs)
    cpu = [runs[k]["execution"]["driver_cpu_seconds"] for k in n]
    wall = [runs[k]["timings_s"]["total"] for k in n]
    share, per_field = np.linalg.solve(np.array([[wall[0], n[0]], [wall[1], n[1]]]), np.array(cpu))
    return {"driver_cpu_s": dict(zip(map(str, n), cpu)), "run_s": dict(zip(map(str, n), wall)),
            "driver_cpu_ms_per_field": round(1000 * float(per_field), 2),
            "driver_cpu_share_of_a_core": round(float(share), 4)}


def summarize(best: dict[tuple[str, int], dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    small, big = min(sizes), max(sizes)
    out: dict[str, Any] = {}
    for mode in MODES:
        per, fixed = _linear((small, best[mode, small]["wall"]), (big, best[mode, big]["wall"]))
        b = best[mode, big]
        out[mode] = {"fields_per_s": {str(n): round(n / best[mode, n]["wall"], 2) for n in sizes},
                     "ms_per_field": round(1000 * per, 2), "marginal_fields_per_s": round(1 / per, 2),
                     "fixed_s": round(fixed, 2), "peak_rss_mib_by_role": b["rss"],
                     "execution": b["run"].get("execution")}
        if mode == "ray":
            out[mode].update(_driver_cpu({n: best[mode, n]["run"] for n in sizes}))
            records = b["run"]["execution"]["records_cpu_seconds"]
            out[mode]["records_cpu_ms_per_field"] = round(1000 * records / big, 2)
        # the writer thread's wall time per field (local: drawing and encoding annotated JPEGs too)
        out[mode]["writes_ms_per_field"] = round(1000 * b["run"]["timings_s"].get("writes", 0.0) / big, 2)
    out["ray_over_local"] = {"ms_per_field": round(out["ray"]["ms_per_field"] - out["local"]["ms_per_field"], 2),
                             "fixed_s": round(out["ray"]["fixed_s"] - out["local"]["fixed_s"], 2),
                             "marginal_throughput_ratio": round(out["ray"]["marginal_fields_per_s"]
                                                                / out["local"]["marginal_fields_per_s"], 3),
                             **{f"fields_per_s_ratio_{n}": round(out["ray"]["fields_per_s"][str(n)]
                                                                 / out["local"]["fields_per_s"][str(n)], 3)
                                for n in sizes}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50,250", help="two field counts (default 50,250)")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved repeats; the fastest of each is kept")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if len(sizes) != 2:
        ap.error("--sizes takes two field counts")
    import ray

    from hemocount.runtime import core_count

    tmp = Path(tempfile.mkdtemp(prefix="hemocount-ray-bench-"))
    try:
        files = make_fields(max(sizes), tmp / "all")
        folders = {n: subset(files, n, tmp / f"f{n}") for n in sizes}
        run_cli(folders[sizes[0]], tmp / "warm", "local")  # ONNX exports and OpenVINO compiles cached once
        load0 = os.getloadavg()[0]
        best: dict[tuple[str, int], dict[str, Any]] = {}
        runs: list[dict[str, Any]] = []
        for rep in range(args.repeat):
            for n in sizes:
                for mode in MODES:
                    r = run_cli(folders[n], tmp / f"o_{mode}_{n}_{rep}", mode)
                    runs.append({"mode": mode, "fields": n, "repeat": rep, "wall_s": round(r["wall"], 2),
                                 "timings_s": r["run"]["timings_s"], "execution": r["run"]["execution"]})
                    print(f"repeat {rep} {mode:>5} {n:>4} fields: {r['wall']:6.1f} s ({n / r['wall']:.1f} fields/s)",
                          flush=True)
                    if (mode, n) not in best or r["wall"] < best[mode, n]["wall"]:
                        best[mode, n] = r
        res = {"date": time.strftime("%Y-%m-%d"), "cores": core_count(), "ray": ray.__version__,
               "load_average_start_end": [round(load0, 1), round(os.getloadavg()[0], 1)], "sizes": sizes,
               "repeat": args.repeat, **summarize(best, sizes), "runs": runs}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
