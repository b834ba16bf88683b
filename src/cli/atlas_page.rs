//! The atlas's static `index.html`: one self-contained page (the atlas embedded as JSON, no
//! server, no CDN, crops by relative path) listing the channels with their top samples,
//! sortable by mean relevance over the dataset.

/// The page for an atlas document (as written to atlas.json).
pub(crate) fn page(doc: &serde_json::Value) -> String {
    // Inside <script>, "</" could close the element: JSON allows "<\/".
    let data = serde_json::to_string(doc)
        .unwrap_or_else(|_| "{}".into())
        .replace("</", "<\\/");
    TEMPLATE.replace("__ATLAS__", &data)
}

const TEMPLATE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Concept atlas</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
#settings { color: #555; margin-bottom: .8em; }
#controls { position: sticky; top: 0; background: #fafafa; padding: .4em 0; border-bottom: 1px solid #ddd; z-index: 1; }
#controls label { margin-right: 1.2em; }
.channel { background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: .6em 0; padding: .4em .6em; }
.channel h2 { font-size: 1em; margin: 0 0 .3em; }
.channel h2 span { font-weight: normal; color: #555; margin-left: 1em; }
.row { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; margin: .2em 0; }
.row b { width: 5.5em; font-size: .85em; color: #555; align-self: center; }
figure { margin: 0; text-align: center; font-size: .7em; color: #666; }
figure img { height: 72px; image-rendering: pixelated; display: block; border: 1px solid #ccc; }
figure .pair { display: flex; gap: 1px; }
</style>
</head>
<body>
<h1>Concept atlas</h1>
<div id="settings"></div>
<div id="controls">
<label>Sort <select id="sort">
<option value="rel-desc">mean relevance, highest first</option>
<option value="rel-asc">mean relevance, lowest first</option>
<option value="act-desc">mean activation, highest first</option>
<option value="channel">channel</option>
</select></label>
<label>Show <select id="show">
<option value="both">RelMax and ActMax</option>
<option value="relmax">RelMax (by relevance)</option>
<option value="actmax">ActMax (by activation)</option>
</select></label>
<label>Channel <input id="filter" size="6" placeholder="e.g. 141"></label>
<span id="count"></span>
</div>
<div id="channels"></div>
<script id="atlas-data" type="application/json">__ATLAS__</script>
<script>
"use strict";
const doc = JSON.parse(document.getElementById("atlas-data").textContent);
const atlas = doc.atlas;
const s = doc.settings || {};
const el = (tag, props, kids) => {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  (kids || []).forEach(k => e.append(k));
  return e;
};
// Relative file names, each path segment URL-encoded (stems may hold '#', '?', '%').
const url = p => p.split("/").map(encodeURIComponent).join("/");
document.getElementById("settings").textContent =
  `${s.arch || ""}, layer ${s.layer}, concepts of ${s.concept_layer}, rule ${s.rule}, ` +
  `${atlas.images} images (${s.dataset}${s.dataset === "folder" ? "" : " " + s.split}), ` +
  `size ${s.size}, ` +
  `top ${atlas.per_concept} per channel`;
function row(label, samples) {
  const r = el("div", {className: "row"}, [el("b", {textContent: label})]);
  for (const x of samples) {
    const pair = el("div", {className: "pair"});
    if (x.crop) pair.append(el("img", {src: url(x.crop), loading: "lazy", alt: x.stem}));
    if (x.heatmap) pair.append(el("img", {src: url(x.heatmap), loading: "lazy", alt: "map"}));
    const f = el("figure", {title: `${x.stem}: value ${x.value.toPrecision(4)}, ` +
      `sum ${x.sum.toPrecision(4)}, neuron [${x.neuron}]`}, [pair]);
    f.append(el("figcaption", {textContent: `${x.stem} ${x.value.toFixed(3)}`}));
    r.append(f);
  }
  return r;
}
function render() {
  const sort = document.getElementById("sort").value;
  const show = document.getElementById("show").value;
  const filter = document.getElementById("filter").value.trim();
  let chs = atlas.channels.slice();
  if (filter !== "") chs = chs.filter(c => String(c.channel).startsWith(filter));
  const by = {
    "rel-desc": (a, b) => b.mean_relevance - a.mean_relevance || a.channel - b.channel,
    "rel-asc": (a, b) => a.mean_relevance - b.mean_relevance || a.channel - b.channel,
    "act-desc": (a, b) => b.mean_activation - a.mean_activation || a.channel - b.channel,
    "channel": (a, b) => a.channel - b.channel,
  }[sort];
  chs.sort(by);
  const out = document.getElementById("channels");
  out.replaceChildren();
  for (const c of chs) {
    const h = el("h2", {textContent: `channel ${c.channel}`}, [el("span", {textContent:
      `mean relevance ${c.mean_relevance.toPrecision(4)}, mean activation ${c.mean_activation.toPrecision(4)}`})]);
    const card = el("div", {className: "channel"}, [h]);
    if (show !== "actmax") card.append(row("RelMax", c.relmax.samples));
    if (show !== "relmax") card.append(row("ActMax", c.actmax.samples));
    out.append(card);
  }
  document.getElementById("count").textContent = `${chs.length} of ${atlas.channels.length} channels`;
}
["sort", "show", "filter"].forEach(id => document.getElementById(id).addEventListener("input", render));
render();
</script>
</body>
</html>
"##;
