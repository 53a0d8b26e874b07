// The page: load the model and the face finder, then answer an uploaded photo or a live webcam. Every step
// mirrors fer_fastai.faces.analyze, so a photo gets Python's boxes and probabilities (docs/onnx.md).
import { FaceFinder, cropFaces } from './faces.js';
import { answerText, classify, fetchOk, isUncertain, loadModel, topK } from './model.js';
import { toGrayscale } from './pillow.js';

const $ = (id) => document.getElementById(id);
const view = $('view');
const MIN_VIEW_SIDE = 288;  // a 48x48 crop is shown blown up by a whole factor to about this size
// `window.fer` holds the loaded pieces, the last answer ({source, width, height, gray, boxes, crops, probs, ...})
// and how many images were answered, for the browser console and the page's test.
const fer = (window.fer = { last: null, answered: 0 });

async function start() {
  const threads = Number(new URLSearchParams(location.search).get('threads') ?? 0);
  try {
    fer.config = await (await fetchOk('config.json')).json();
    setStatus(`Loading ${fer.config.model.name} and the face finder…`);
    [fer.model, fer.finder] = await Promise.all([loadModel(fer.config, threads), loadFaceFinder(fer.config.detector)]);
  } catch (error) {
    setStatus(`Could not start: ${error.message}`, 'error');
    return;
  }
  showAbout(fer.model, fer.finder);
  setStatus('Ready: choose a photo or start the webcam. Nothing leaves this device.');
  $('photo').disabled = $('webcam').disabled = false;
}

/** OpenCV.js (one file with its wasm inside) and the Haar cascade, fetched from this server. */
async function loadFaceFinder(detector) {
  const start = performance.now();
  const [{ cv }, cascade] = await Promise.all([loadOpenCv(fer.config.runtime.opencv),
    fetchOk(detector.cascade).then((response) => response.arrayBuffer())]);
  const finder = new FaceFinder(cv, new Uint8Array(cascade), detector);
  finder.loadMs = performance.now() - start;
  return finder;
}

/** Resolves to { cv }: opencv.js's module object is a thenable that resolves to itself, so a promise (or
 *  await) of it never settles; it is wrapped, and readiness comes from its onRuntimeInitialized hook. */
function loadOpenCv(url) {
  return new Promise((resolve, reject) => {
    const script = Object.assign(document.createElement('script'), { src: url, async: true });
    script.onerror = () => reject(new Error(`could not load ${url}`));
    script.onload = () => {
      const cv = window.cv;
      if (cv.Mat) resolve({ cv });
      else cv.onRuntimeInitialized = () => resolve({ cv });
    };
    document.head.append(script);
  });
}

/** Python's analyze(): grayscale, faces (or the whole image if it is already 48x48), crops, probabilities. */
async function analyze(rgba, width, height, settings, source) {
  const { model, finder } = fer;
  const t0 = performance.now();
  const gray = toGrayscale(rgba);
  const isCrop = width === model.size && height === model.size;
  const boxes = isCrop ? [[0, 0, width, height]] : finder.find(gray, width, height, settings);
  const t1 = performance.now();
  const crops = cropFaces(gray, width, height, boxes, model.size);
  const { probs, ms } = crops.length ? await classify(model, crops) : { probs: [], ms: 0 };
  const mode = isCrop ? 'crop' : boxes.length ? 'faces' : 'no face';
  return {
    source, width, height, gray, mode, boxes, crops, probs, uncertain: probs.map((p) => isUncertain(p, model)),
    timings: { detect: t1 - t0, model: ms, perFace: crops.length ? ms / crops.length : 0, total: performance.now() - t0 },
  };
}

async function answerPhoto(file) {
  let bitmap;
  try {
    // As Pillow reads it: EXIF orientation applied, no colour management, alpha kept apart for flattening.
    bitmap = await createImageBitmap(file, { imageOrientation: 'from-image', colorSpaceConversion: 'none',
                                             premultiplyAlpha: 'none' });
  } catch {
    setStatus(`Could not use this image: ${file.name} is not a picture this browser can read (try JPEG or PNG).`, 'error');
    return;
  }
  stopWebcam();
  const result = await analyze(pixelsOf(bitmap), bitmap.width, bitmap.height, fer.config.detector.photo, 'photo');
  show(result, bitmap);
  setStatus(summary(result, file.name));
}

const scratch = document.createElement('canvas').getContext('2d', { willReadFrequently: true });

/** RGBA bytes of an image or video frame at its own size. */
function pixelsOf(source, width = source.width, height = source.height) {
  scratch.canvas.width = width;
  scratch.canvas.height = height;
  scratch.clearRect(0, 0, width, height);
  scratch.drawImage(source, 0, 0, width, height);
  return scratch.getImageData(0, 0, width, height, { colorSpace: 'srgb' }).data;
}

// ---- webcam: a live loop, each frame answered as a photo is, with the faster STREAM settings ----

let camera = null;

async function startWebcam() {
  let stream;
  try {
    stream = camera = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 } }, audio: false });
  } catch (error) {
    setStatus(`Could not open the webcam: ${error.message}`, 'error');
    return;
  }
  const video = $('camera');
  video.srcObject = camera;
  await video.play();
  $('webcam').textContent = 'Stop webcam';
  while (camera === stream) {
    const result = await analyze(pixelsOf(video, video.videoWidth, video.videoHeight), video.videoWidth,
                                 video.videoHeight, fer.config.detector.stream, 'webcam');
    if (camera !== stream) break;  // stopped, or a photo chosen, while this frame was answered
    show(result, scratch.canvas);  // the frame that was answered, not the video's newer one
    setStatus(`${summary(result, 'webcam')} · ${(1000 / result.timings.total).toFixed(1)} frames/s possible`);
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
}

function stopWebcam() {
  if (!camera) return;
  camera.getTracks().forEach((track) => track.stop());
  camera = null;
  $('camera').srcObject = null;
  $('webcam').textContent = 'Start webcam';
}

// ---- drawing ----

function show(result, image) {
  fer.last = result;
  fer.answered += 1;
  drawView(result, image);
  listFaces(result);
  $('note').textContent = result.mode === 'no face' ? fer.config.no_face_hint
    : result.mode === 'crop' ? `${result.width}x${result.height} input: treated as an already-cropped face (no detection).` : '';
}

/** The image with a numbered, coloured box and its answer on each face (as faces.draw_faces draws them). */
function drawView(result, image) {
  const { width, height, boxes, probs, mode } = result;
  const scale = Math.max(width, height) < MIN_VIEW_SIDE ? Math.ceil(MIN_VIEW_SIDE / Math.max(width, height)) : 1;
  view.width = width * scale;
  view.height = height * scale;
  const ctx = view.getContext('2d');
  ctx.imageSmoothingEnabled = scale === 1;  // blown-up crops keep square pixels
  ctx.drawImage(image, 0, 0, view.width, view.height);
  const line = Math.max(2, Math.round(Math.max(view.width, view.height) / 250));
  const fontSize = Math.max(14, Math.round(Math.max(view.width, view.height) / 36));
  ctx.font = `600 ${fontSize}px system-ui, sans-serif`;
  ctx.textBaseline = 'top';
  boxes.forEach(([x, y, w, h], i) => {
    const colour = faceColour(i);
    [x, y, w, h] = [x, y, w, h].map((v) => v * scale);
    let text = answerText(probs[i], fer.model);
    if (mode === 'faces') {
      ctx.strokeStyle = colour;
      ctx.lineWidth = line;
      ctx.strokeRect(x + line / 2, y + line / 2, w - line, h - line);
      text = `${i + 1} ${text}`;
    }
    const pad = line + 2, tagWidth = ctx.measureText(text).width + 2 * pad, tagHeight = fontSize + 2 * pad;
    const tx = Math.min(Math.max(0, x), Math.max(0, view.width - tagWidth));
    const ty = mode === 'faces' ? (y >= tagHeight ? y - tagHeight : y) : view.height - tagHeight;
    ctx.fillStyle = colour;
    ctx.fillRect(tx, ty, tagWidth, tagHeight);
    ctx.fillStyle = 'black';
    ctx.fillText(text, tx + pad, ty + pad);
  });
}

function faceColour(index) {
  const colours = fer.config.face_colours;
  return colours[index % colours.length];
}

/** One card per face: its answer, top-3 bars and the model's time per face. */
function listFaces(result) {
  const list = $('faces');
  list.replaceChildren(...result.probs.map((probs, i) => {
    const item = document.createElement('li');
    item.style.setProperty('--face-colour', faceColour(i));
    item.classList.toggle('uncertain', result.uncertain[i]);
    const title = document.createElement('h3');
    title.textContent = `Face ${i + 1}: ${answerText(probs, fer.model)}`;
    const bars = topK(probs, fer.model.labels, 3).map(([label, p]) => {
      const row = document.createElement('div');
      row.className = 'bar';
      row.innerHTML = '<span class="label"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
      row.querySelector('.label').textContent = label;
      row.querySelector('.fill').style.width = `${(p * 100).toFixed(1)}%`;
      row.querySelector('.value').textContent = `${(p * 100).toFixed(1)}%`;
      return row;
    });
    const timing = document.createElement('p');
    timing.className = 'timing';
    timing.textContent = `${result.timings.perFace.toFixed(1)} ms per face in the model`;
    item.append(title, ...bars, timing);
    return item;
  }));
}

function summary(result, name) {
  const { timings, probs } = result;
  const faces = result.mode === 'no face' ? 'no face found' : result.mode === 'crop' ? '1 face crop'
    : `${probs.length} face${probs.length === 1 ? '' : 's'}`;
  const model = probs.length ? ` · model ${timings.model.toFixed(1)} ms (${timings.perFace.toFixed(1)} ms per face)` : '';
  return `${name}: ${faces} · detect ${timings.detect.toFixed(1)} ms${model}`;
}

function showAbout(model, finder) {
  const t = model.timings;
  $('about').textContent = `${model.name} (${(model.bytes / 1e6).toFixed(1)} MB) loaded in ${t.load.toFixed(0)} ms `
    + `(download ${t.fetch.toFixed(0)} ms, session ${t.session.toFixed(0)} ms; first run ${t.firstRun.toFixed(0)} ms) · `
    + `ONNX Runtime Web ${model.ort.env.versions.web}, wasm, ${model.threads} thread${model.threads === 1 ? '' : 's'}`
    + `${model.isolated ? '' : ' (not cross-origin isolated: one thread)'} · OpenCV.js face finder ready in `
    + `${finder.loadMs.toFixed(0)} ms`;
}

function setStatus(text, kind = 'info') {
  const status = $('status');
  status.textContent = text;
  status.dataset.kind = kind;
}

$('photo').addEventListener('change', (event) => {
  const [file] = event.target.files;
  if (file) answerPhoto(file);
  event.target.value = '';  // choosing the same file again answers again
});
$('webcam').addEventListener('click', () => (camera ? stopWebcam() : startWebcam()));
start();
