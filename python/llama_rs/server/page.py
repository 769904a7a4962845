"""The web page served at `/`: one self-contained file (no external assets, works offline)
that streams from /v1/completions. `render` fills in the model and the library's defaults."""

import html

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llama-rs</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 860px; margin: 2em auto; padding: 0 1em; color: #222; }
  h1 { font-size: 1.3em; margin-bottom: .2em; }
  .sub { color: #777; margin-bottom: 1em; }
  textarea { width: 100%; min-height: 7em; font: inherit; padding: .5em; box-sizing: border-box; }
  .row { display: flex; flex-wrap: wrap; gap: 1em; margin: .7em 0; align-items: end; }
  label { display: flex; flex-direction: column; font-size: .85em; color: #555; }
  input { width: 7em; font: inherit; padding: .2em; }
  button { font: inherit; padding: .4em 1.2em; cursor: pointer; }
  #output { white-space: pre-wrap; border: 1px solid #ddd; border-radius: 4px; padding: .8em; min-height: 6em; background: #fafafa; }
  #output .prompt { color: #888; }
  #stats { color: #777; font-size: .85em; margin-top: .4em; min-height: 1.2em; }
  .error { color: #b00; }
</style>
</head>
<body>
<h1>llama-rs</h1>
<div class="sub">model <b>{{MODEL}}</b>, context {{N_CTX}} tokens</div>
<textarea id="prompt" placeholder="Type a prompt...">Never trust a computer</textarea>
<div class="row">
  <label>max tokens <input id="max_tokens" type="number" value="{{MAX_TOKENS}}" min="1"></label>
  <label>temperature <input id="temperature" type="number" value="{{TEMPERATURE}}" step="0.1" min="0"></label>
  <label>top k <input id="top_k" type="number" value="{{TOP_K}}" min="0"></label>
  <label>top p <input id="top_p" type="number" value="{{TOP_P}}" step="0.05" min="0.01" max="1"></label>
  <label>repeat penalty <input id="repeat_penalty" type="number" value="{{REPEAT_PENALTY}}" step="0.05" min="0.01"></label>
  <label>seed <input id="seed" type="number" value="-1"></label>
  <label>API key <input id="api_key" type="password" placeholder="if required"></label>
  <button id="generate">Generate</button>
  <button id="stop" disabled>Stop</button>
</div>
<div id="output"></div>
<div id="stats"></div>
<script>
const $ = (id) => document.getElementById(id);
let controller = null;
$("api_key").value = localStorage.getItem("llama-rs-key") || "";

async function generate() {
  const prompt = $("prompt").value;
  const body = {
    prompt, stream: true, stream_options: {include_usage: true},
    max_tokens: parseInt($("max_tokens").value, 10),
    temperature: parseFloat($("temperature").value),
    top_k: parseInt($("top_k").value, 10),
    top_p: parseFloat($("top_p").value),
    repeat_penalty: parseFloat($("repeat_penalty").value),
  };
  const seed = parseInt($("seed").value, 10);
  if (seed >= 0) body.seed = seed;
  const headers = {"Content-Type": "application/json"};
  const key = $("api_key").value;
  localStorage.setItem("llama-rs-key", key);
  if (key) headers["Authorization"] = "Bearer " + key;
  const out = $("output");
  out.innerHTML = "";
  const p = document.createElement("span"); p.className = "prompt"; p.textContent = prompt; out.appendChild(p);
  const gen = document.createElement("span"); gen.id = "generated"; out.appendChild(gen);
  $("stats").textContent = "";
  $("generate").disabled = true; $("stop").disabled = false;
  controller = new AbortController();
  const t0 = performance.now(); let first = null, pieces = 0, usage = null, finish = null;
  try {
    const r = await fetch("/v1/completions", {method: "POST", headers, body: JSON.stringify(body), signal: controller.signal});
    if (!r.ok) {
      const e = await r.json().catch(() => ({}));
      throw new Error((e.error && e.error.message) || r.statusText);
    }
    const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = "";
    while (true) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf("\\n\\n")) >= 0) {
        const ev = buf.slice(0, i); buf = buf.slice(i + 2);
        if (!ev.startsWith("data: ")) continue;
        const data = ev.slice(6);
        if (data === "[DONE]") continue;
        const msg = JSON.parse(data);
        if (msg.error) throw new Error(msg.error.message);
        if (msg.usage) usage = msg.usage;
        const c = msg.choices[0];
        if (!c) continue;  // the usage chunk has no choices
        if (c.text) { if (first === null) first = performance.now(); gen.textContent += c.text; pieces++; }
        if (c.finish_reason) finish = c.finish_reason;
      }
      const secs = (performance.now() - (first || t0)) / 1000;
      $("stats").textContent = pieces + " pieces, " + (secs > 0 ? (pieces / secs).toFixed(1) : "-") + " tok/s";
    }
    const secs = (performance.now() - (first || t0)) / 1000;
    const n = usage ? usage.completion_tokens : pieces;
    $("stats").textContent = n + " tokens in " + secs.toFixed(2) + " s, " + (secs > 0 ? (n / secs).toFixed(1) : "-") +
      " tok/s" + (finish ? ", finished: " + finish : "");
  } catch (e) {
    if (e.name === "AbortError") { $("stats").textContent += " (stopped)"; }
    else { const s = document.createElement("div"); s.className = "error"; s.textContent = "error: " + e.message; out.appendChild(s); }
  } finally {
    $("generate").disabled = false; $("stop").disabled = true; controller = null;
  }
}
$("generate").onclick = generate;
$("stop").onclick = () => { if (controller) controller.abort(); };
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
</script>
</body>
</html>
"""


def render(model_name: str, n_ctx: int) -> str:
    from llama_rs.generation import DEFAULTS

    values = {
        "MODEL": model_name,
        "N_CTX": n_ctx,
        "MAX_TOKENS": DEFAULTS.max_tokens,
        "TEMPERATURE": DEFAULTS.temp,
        "TOP_K": DEFAULTS.top_k,
        "TOP_P": DEFAULTS.top_p,
        "REPEAT_PENALTY": DEFAULTS.repeat_penalty,
    }
    page = PAGE
    for k, v in values.items():
        page = page.replace("{{" + k + "}}", html.escape(str(v)))
    return page
