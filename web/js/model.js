// The model in the browser: ONNX Runtime Web (wasm) running the .onnx that config.json names. Labels and
// the uncertainty threshold come from the model card beside it, because ONNX Runtime Web does not expose
// an ONNX file's metadata. The input is Python's: uint8 crop / 255 as float32 [N, 1, 48, 48]; the answer is
// the `probs` output (calibrated softmax; an ensemble's `logits` are log-probabilities, so never softmax those).

/** Loads runtime, model and card; `threads` 0 lets ONNX Runtime choose. Times what a visitor waits for. */
export async function loadModel(config, threads) {
  const start = performance.now();
  const ort = await import(new URL(config.runtime.ort, location.href).href);
  ort.env.wasm.wasmPaths = new URL(config.runtime.wasm_paths, location.href).href;  // local files only
  if (threads > 0) ort.env.wasm.numThreads = threads;
  const [modelBytes, card] = await Promise.all([
    fetchOk(config.model.onnx).then((response) => response.arrayBuffer()),
    fetchOk(config.model.card).then((response) => response.json()),
  ]);
  const fetched = performance.now();
  const session = await ort.InferenceSession.create(modelBytes, { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
  const created = performance.now();
  const model = {
    ort, session, name: config.model.name, size: config.input_size, labels: card.labels,
    threshold: card.uncertainty?.threshold ?? null, bytes: modelBytes.byteLength,
    threads: ort.env.wasm.numThreads, isolated: self.crossOriginIsolated,
  };
  const warmStart = performance.now();
  await classify(model, [new Uint8Array(model.size * model.size)]);  // the first run allocates; not a visitor's face
  model.timings = { fetch: fetched - start, session: created - fetched, load: created - start,
                    firstRun: performance.now() - warmStart };
  return model;
}

/** fetch, with an HTTP error as an Error that names the file. */
export async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`could not load ${url} (HTTP ${response.status})`);
  return response;
}

/** Probabilities for uint8 face crops (size x size each), in one batch, and the time the model took. */
export async function classify(model, crops) {
  const pixels = model.size * model.size;
  const input = new Float32Array(crops.length * pixels);
  crops.forEach((crop, i) => { for (let p = 0; p < pixels; p++) input[i * pixels + p] = crop[p] / 255; });
  const start = performance.now();
  const { probs } = await model.session.run(
    { image: new model.ort.Tensor('float32', input, [crops.length, 1, model.size, model.size]) }, ['probs']);
  const ms = performance.now() - start;
  const classes = model.labels.length;
  return { probs: crops.map((_, i) => Array.from(probs.data.subarray(i * classes, (i + 1) * classes))), ms };
}

/** The k most probable [label, probability] pairs, most probable first (ties keep label order, like Python's). */
export function topK(probs, labels, k = 3) {
  return probs.map((p, i) => [i, p]).sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, k).map(([i, p]) => [labels[i], p]);
}

/** Python's answer_text: 'happy 93%', or below the card's threshold 'uncertain: sad 31% / neutral 29%'. */
export function answerText(probs, model) {
  const [[label, prob], [second, secondProb]] = topK(probs, model.labels, 2);
  const percent = (p) => `${Math.round(p * 100)}%`;
  if (isUncertain(probs, model)) return `uncertain: ${label} ${percent(prob)} / ${second} ${percent(secondProb)}`;
  return `${label} ${percent(prob)}`;
}

/** selective.is_uncertain: the top probability is below the card's threshold (never, if the card has none). */
export function isUncertain(probs, model) {
  return model.threshold !== null && Math.max(...probs) < model.threshold;
}
