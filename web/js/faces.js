// Faces in a photo, found and cropped as fer_fastai/faces.py does (find_faces, detect_faces, clamp_box,
// crop_faces): OpenCV's Haar cascade, run through OpenCV.js with the settings that config.json carries
// from faces.py, on the same grayscale pixels, so the boxes are Python's boxes.
import { crop, resizeBilinear } from './pillow.js';

/** Python's round(): halves go to the even neighbour (round(2.5) == 2). */
export function roundHalfEven(x) {
  const floor = Math.floor(x), diff = x - floor;
  if (diff !== 0.5) return Math.round(x);
  return floor % 2 === 0 ? floor : floor + 1;
}

export class FaceFinder {
  /** `cv`: a ready OpenCV.js; `cascadeXml`: the cascade file's bytes; `detector`: config.json's "detector". */
  constructor(cv, cascadeXml, detector) {
    this.cv = cv;
    this.detector = detector;
    cv.FS_createDataFile('/', detector.cascade_file, cascadeXml, true, false, false);
    this.cascade = new cv.CascadeClassifier();
    if (!this.cascade.load(detector.cascade_file)) throw new Error(`OpenCV.js could not read ${detector.cascade_file}`);
  }

  /** Face boxes [x, y, w, h] in the image's pixels, left to right; if none, tried again with the edges
   *  extended by retry_pad, since a face that fills the image is often found only with room around it. */
  find(gray, width, height, settings) {
    const boxes = this.detect(gray, width, height, settings);
    if (boxes.length) return boxes;
    const pad = roundHalfEven(Math.max(width, height) * this.detector.retry_pad);
    const padded = padEdges(gray, width, height, pad);
    return this.detect(padded, width + 2 * pad, height + 2 * pad, settings)
      .map(([x, y, w, h]) => clampBox([x - pad, y - pad, w, h], width, height));
  }

  /** One cascade pass: on an equalised copy no larger than max_side, boxes scaled back and sorted by (x, y). */
  detect(gray, width, height, settings) {
    const cv = this.cv;
    const scale = Math.min(1.0, settings.max_side / Math.max(width, height));
    let small = gray, smallWidth = width, smallHeight = height;
    if (scale !== 1.0) {
      smallWidth = Math.max(1, roundHalfEven(width * scale));
      smallHeight = Math.max(1, roundHalfEven(height * scale));
      small = resizeBilinear(gray, width, height, smallWidth, smallHeight);
    }
    const minSide = Math.max(this.detector.cascade_window, roundHalfEven(Math.min(smallWidth, smallHeight) * settings.min_face));
    if (Math.min(smallWidth, smallHeight) < minSide) return [];
    const pixels = cv.matFromArray(smallHeight, smallWidth, cv.CV_8UC1, small);
    const equalised = new cv.Mat();
    const found = new cv.RectVector();
    try {
      cv.equalizeHist(pixels, equalised);
      this.cascade.detectMultiScale(equalised, found, settings.scale_factor, settings.min_neighbors, 0,
        new cv.Size(minSide, minSide), new cv.Size(0, 0));
      const boxes = [];
      for (let i = 0; i < found.size(); i++) {
        const r = found.get(i);
        boxes.push([r.x, r.y, r.width, r.height].map((v) => roundHalfEven(v / scale)));
      }
      return boxes.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    } finally {
      pixels.delete(); equalised.delete(); found.delete();
    }
  }
}

/** np.pad(gray, pad, mode="edge"): every side extended by `pad` copies of its edge pixels. */
function padEdges(gray, width, height, pad) {
  const outWidth = width + 2 * pad, out = new Uint8Array(outWidth * (height + 2 * pad));
  for (let y = 0; y < height + 2 * pad; y++) {
    const row = Math.min(height - 1, Math.max(0, y - pad)) * width;
    for (let x = 0; x < outWidth; x++) out[y * outWidth + x] = gray[row + Math.min(width - 1, Math.max(0, x - pad))];
  }
  return out;
}

/** The part of a box inside a width x height image, at least 1 pixel each way. */
export function clampBox([x, y, w, h], width, height) {
  const left = Math.max(0, x), top = Math.max(0, y);
  const right = Math.min(width, x + w), bottom = Math.min(height, y + h);
  return [left, top, Math.max(1, right - left), Math.max(1, bottom - top)];
}

/** Each box's pixels (the box as it is, clamped), resized to size x size; a crop already that size is kept. */
export function cropFaces(gray, width, height, boxes, size) {
  return boxes.map(([x, y, w, h]) => {
    const box = [Math.max(0, x), Math.max(0, y), Math.min(width, x + w), Math.min(height, y + h)];
    const [cropWidth, cropHeight] = [box[2] - box[0], box[3] - box[1]];
    const pixels = crop(gray, width, box);
    return cropWidth === size && cropHeight === size ? pixels : resizeBilinear(pixels, cropWidth, cropHeight, size, size);
  });
}
