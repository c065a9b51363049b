"""The report's inline CSS and its one small script (section toggles, expand all when printing)."""

from __future__ import annotations

SCRIPT = """(function(){
function all(sel,open){document.querySelectorAll(sel).forEach(function(d){d.open=open;});}
var t=document.querySelector('.toggles');
if(t){t.hidden=false;t.addEventListener('click',function(e){var b=e.target.closest('button');
if(b)all('details.slide',b.getAttribute('data-toggle')==='open');});}
window.addEventListener('beforeprint',function(){all('details',true);});
})();"""

CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#d9dee5;--bg:#fff;--soft:#f5f7fa;--accent:#3b4a9e;
--warn:#8a5a00;--warnbg:#fff4d6;--err:#a4161a;--errbg:#fde2e2;--info:#1f5f8b;--infobg:#e3f0fa;--ok:#1e6b3a}
*{box-sizing:border-box}
html{scroll-padding-top:5rem}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:var(--bg)}
header.top{position:sticky;top:0;z-index:10;display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;align-items:center;
padding:.5rem 1.2rem;background:#fff;border-bottom:1px solid var(--line);box-shadow:0 1px 4px rgba(0,0,0,.06)}
.brand{font-weight:700;font-size:1.1rem}
.ruo{font-weight:700;color:var(--err);background:var(--errbg);border:1px solid #f1b5b5;border-radius:4px;
padding:.15rem .6rem}
nav{margin-left:auto}nav a{margin-left:.8rem}
a{color:var(--accent)}
main{max-width:1280px;margin:0 auto;padding:0 1.2rem 2rem}
h2{margin:1.6rem 0 .6rem;font-size:1.25rem;border-bottom:2px solid var(--line);padding-bottom:.2rem}
h4{margin:.2rem 0 .4rem;font-size:.95rem}
.ruo-banner{margin:1rem 0;padding:.6rem .9rem;border-left:5px solid var(--err);background:var(--errbg)}
.ruo-banner strong{font-size:1.05rem}
.small{font-size:.85em;color:var(--muted)}.muted{color:var(--muted)}
code{font:12px/1.3 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
dl.run{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:.5rem 0}
dl.run dt{font-weight:600;color:var(--muted)}dl.run dd{margin:0}
.totals{background:var(--soft);padding:.5rem .8rem;border-radius:4px}
.totals .alert{color:var(--err)}
table{border-collapse:collapse}
th,td{padding:.25rem .55rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.scroll{max-height:75vh;overflow:auto;border:1px solid var(--line);border-radius:4px}
table.overview{width:100%}
table.overview thead th{position:sticky;top:0;z-index:1;box-shadow:0 1px 0 var(--line)}
table.overview tbody tr:nth-child(even){background:#fafbfc}
table.overview tr.row-all td.name{border-left:4px solid var(--err)}
td.name{font-weight:600;min-width:9rem;overflow-wrap:anywhere}
td.all{white-space:nowrap}
.diff{font-variant-numeric:tabular-nums;white-space:nowrap}
.oor-cell{font-weight:700;color:var(--err);text-decoration:underline dotted}
.badge{display:inline-block;padding:0 .45rem;border-radius:9px;font-size:.8rem;font-weight:600;white-space:nowrap;
border:1px solid transparent}
.lvl-error{color:var(--err);background:var(--errbg);border-color:#f1b5b5}
.lvl-warning{color:var(--warn);background:var(--warnbg);border-color:#f0d58a}
.lvl-info{color:var(--info);background:var(--infobg);border-color:#b4d3ea}
.all-flag{color:#fff;background:var(--err)}
.ok-text{color:var(--ok)}
.insufficient{color:var(--warn);font-weight:600}
.badge.insufficient{background:var(--warnbg);border-color:#f0d58a}
p.insufficient{background:var(--warnbg);border-left:5px solid #e0a800;padding:.45rem .7rem;font-weight:400}
.toggles button{font:inherit;padding:.2rem .7rem;margin-right:.3rem}
details.slide{border:1px solid var(--line);border-radius:6px;margin:.5rem 0;background:#fff}
details.slide>summary{cursor:pointer;padding:.5rem .8rem;background:var(--soft);border-radius:6px;
list-style-position:inside}
details.slide[open]>summary{border-bottom:1px solid var(--line);border-radius:6px 6px 0 0}
.sname{font-weight:700;overflow-wrap:anywhere}.chips{color:var(--muted);margin:0 .4rem}
.slide-body{display:flex;flex-wrap:wrap;gap:.8rem 2rem;padding:.8rem;scroll-margin-top:7rem}
.block{min-width:12rem}.block.wide{flex-basis:100%}
.diff-wrap{display:flex;flex-wrap:wrap;gap:1rem 2rem;align-items:flex-start}
table.compact{font-size:.92em}
tr.oor-row td{background:var(--errbg)}
.oor{font-weight:700;color:var(--err);white-space:nowrap}
ul.flags{margin:0;padding-left:1.1rem}ul.flags li{margin:.15rem 0}
figure{margin:0}
.chart-fig .legend{margin:.2rem 0 0}
svg.chart{max-width:100%;height:auto;font:11px system-ui,sans-serif}
svg .grid{stroke:#e3e7ec}svg .tick{fill:var(--muted);text-anchor:middle}
svg .lab{text-anchor:end;fill:var(--fg)}svg .oor-t{fill:var(--err);font-weight:700}
svg .ref{fill:#d8efdc}svg .bar{fill:#6274c9}svg .bar-oor{fill:#d1495b}
svg .whisker{stroke:#1d2330;stroke-width:1.4;fill:none}
.key{display:inline-block;width:14px;height:9px;margin:0 .25rem 0 .6rem;vertical-align:middle}
.bar-key{background:#6274c9}.ref-key{background:#d8efdc}.whisker-key{height:2px;background:#1d2330}
.thumbs{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:.7rem}
.thumbs figure{border:1px solid var(--line);border-radius:4px;padding:.3rem;background:var(--soft)}
.thumbs img{display:block;width:100%;max-width:200px;height:auto;margin:0 auto}
.thumbs figcaption{font-size:.8rem;margin-top:.25rem}
.placeholder{height:120px;display:flex;align-items:center;justify-content:center;color:var(--muted);
border:1px dashed #b8c0cc;background:repeating-linear-gradient(45deg,#f7f8fa,#f7f8fa 8px,#eef0f3 8px,#eef0f3 16px)}
details.inline{display:inline-block;margin-left:.5rem}details.inline summary{cursor:pointer;color:var(--accent)}
footer{margin-top:2rem;color:var(--muted);font-size:.85rem;border-top:1px solid var(--line)}
@media print{
header.top{position:static;box-shadow:none}nav,.toggles{display:none}
.scroll{max-height:none;overflow:visible;border:0}
details.slide{break-inside:avoid-page}
details:not([open])::details-content{content-visibility:visible;display:contents}
a{color:inherit;text-decoration:none}
body{font-size:11px}
}
"""
