// Test-only: llama.cpp (node-llama-cpp's prebuilt CPU build) on a GGUF file.
//   node logits.mjs MODEL.gguf IDS.json TEXT.txt
// IDS.json: token ids to evaluate. Prints JSON {"tokens": llama.cpp's tokenization of TEXT (no
// special tokens added), "logits": [position][vocab] next-token logits for every id}.
import {readFileSync} from "node:fs";
import {getLlama} from "node-llama-cpp";

const [modelPath, idsPath, textPath] = process.argv.slice(2);
const ids = JSON.parse(readFileSync(idsPath, "utf8"));
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
const tokens = Array.from(model.tokenize(readFileSync(textPath, "utf8"), false));
const ctx = await model.createContext({contextSize: Math.max(64, ids.length + 8), threads: 2});
const seq = ctx.getSequence();
const out = await seq.controlledEvaluate(ids.map(t => [t, {generateNext: {logits: true}}]));

const logits = out.map(o => {
  const m = o.next.logits;
  const row = new Array(m.size);
  for (const [t, v] of m) row[t] = v;
  return row;
});
process.stdout.write(JSON.stringify({tokens, logits}));
await ctx.dispose();
await model.dispose();
