// Reproduces a conformance folder (artifacts/conformance/NAME, docs/onnx.md#conformance-vectors) with
// onnxruntime-node: every face's stored 48x48 crop / 255 goes in, and the probabilities, labels and
// uncertain flags must be Python's within the folder's tolerance. Face detection and resizing stay in
// Python: for a runtime without OpenCV, the crops are the contract's boundary.
//
//   node check.mjs FOLDER [MODEL.onnx]     (default model: the one the folder's vectors.json names)
//
// Labels, temperature and threshold come from the card beside the model (NAME.json): onnxruntime-node
// does not expose ONNX metadata.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import ort from 'onnxruntime-node';

const SIZE = 48;

function fail(message) {
  console.error(`node check: FAILED: ${message}`);
  process.exit(1);
}

function readJson(file) {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    fail(`cannot read ${file} (${error.message})`);
  }
}

// The card beside a model file: NAME.onnx and NAME.int8.onnx both have NAME.json.
function cardPath(modelPath) {
  return modelPath.replace(/(\.int8)?\.onnx$/i, '.json');
}

// Faces' crops as the model input: float32 [N, 1, 48, 48], pixel / 255, rows top to bottom.
function inputTensor(faces) {
  const data = new Float32Array(faces.length * SIZE * SIZE);
  faces.forEach((face, index) => {
    if (face.crop.length !== SIZE || face.crop.some((row) => row.length !== SIZE)) fail('a crop is not 48x48');
    face.crop.flat().forEach((pixel, offset) => { data[index * SIZE * SIZE + offset] = pixel / 255; });
  });
  return new ort.Tensor('float32', data, [faces.length, 1, SIZE, SIZE]);
}

function argmax(values) {
  return values.reduce((best, value, index) => (value > values[best] ? index : best), 0);
}

async function main() {
  if (!process.argv[2]) fail('usage: node check.mjs artifacts/conformance/NAME [MODEL.onnx]');
  const folder = path.resolve(process.argv[2]);
  const vectors = readJson(path.join(folder, 'vectors.json'));
  const modelPath = process.argv[3] ? path.resolve(process.argv[3]) : path.resolve(folder, vectors.model.path);
  const card = readJson(cardPath(modelPath));
  if (!isDeepStrictEqual(card.preprocess, vectors.contract)) {
    fail(`the card ${cardPath(modelPath)} states another contract than ${folder}/vectors.json (or none): regenerate one of them`);
  }
  const labels = card.labels;
  const threshold = card.uncertainty?.threshold ?? null;
  const tolerance = vectors.tolerances.probs;

  const faces = vectors.cases.flatMap((item) => item.faces.map((face, index) => ({ ...face, where: `${item.input} face ${index}` })));
  if (faces.length === 0) fail(`${folder}/vectors.json has no faces`);
  const session = await ort.InferenceSession.create(modelPath, { executionProviders: ['cpu'] });
  // One batch of every face, then each face alone: the file's batch axis is dynamic.
  const batched = (await session.run({ image: inputTensor(faces) }, ['probs'])).probs.data;
  let worst = 0;
  for (const [index, face] of faces.entries()) {
    const alone = (await session.run({ image: inputTensor([face]) }, ['probs'])).probs.data;
    for (const probs of [batched.slice(index * labels.length, (index + 1) * labels.length), alone]) {
      const diff = Math.max(...face.probs.map((expected, k) => Math.abs(probs[k] - expected)));
      worst = Math.max(worst, diff);
      if (!(diff <= tolerance)) fail(`${face.where}: probabilities differ by ${diff.toExponential(2)} > ${tolerance.toExponential(0)}`);
      const label = labels[argmax(Array.from(probs))];
      const uncertain = threshold !== null && Math.max(...probs) < threshold;
      if (label !== face.label || uncertain !== face.uncertain) {
        fail(`${face.where}: ${label}${uncertain ? ' (uncertain)' : ''}, expected ${face.label}${face.uncertain ? ' (uncertain)' : ''}`);
      }
    }
  }
  const version = createRequire(import.meta.url)('onnxruntime-node/package.json').version;
  console.log(`node check ${path.basename(folder)}: ${path.basename(modelPath)} on onnxruntime-node ${version}, `
    + `${faces.length} faces from ${vectors.cases.length} inputs (batch ${faces.length} and 1): labels and uncertain flags equal, `
    + `max |Δprob| ${worst.toExponential(1)} (tolerance ${tolerance.toExponential(0)}): PASSED`);
}

main().catch((error) => fail(error.message.split('\n')[0]));
