// Pillow's pixel arithmetic, ported exactly, so that a face crop made here is byte for byte the crop
// Python makes (fer_fastai.preprocess): RGBA → "L" grayscale, and Image.resize(..., BILINEAR).
// Sources: Pillow 12.3 src/libImaging/Convert.c (rgb2l), AlphaComposite.c, Resample.c.

// Resample.c keeps 8-bit filter weights in fixed point with 32 - 8 - 2 fraction bits.
const PRECISION_BITS = 22;
const ONE_HALF = 1 << (PRECISION_BITS - 1);

/** Grayscale bytes of RGBA pixels: transparency flattened onto white (Image.alpha_composite), then
 *  ITU-R 601-2 luma with Pillow's integer rounding, L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16. */
export function toGrayscale(rgba) {
  const gray = new Uint8Array(rgba.length / 4);
  for (let i = 0, p = 0; i < gray.length; i++, p += 4) {
    let r = rgba[p], g = rgba[p + 1], b = rgba[p + 2];
    const a = rgba[p + 3];
    if (a !== 255) [r, g, b] = [r, g, b].map((v) => overWhite(v, a));
    gray[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
  }
  return gray;
}

// AlphaComposite.c with an opaque white background: 7 extra bits of precision, rounded division by 255.
function overWhite(value, alpha) {
  if (alpha === 0) return 255;
  const sum = (value * alpha + 255 * (255 - alpha)) * 128 + (0x80 << 7);
  return (((sum >> 8) + sum) >> 8) >> 7;
}

/** Pillow's antialiased bilinear resize of an 8-bit grayscale image: a triangle filter widened to the
 *  scale when shrinking, weights normalised and rounded to fixed point, a horizontal then a vertical pass. */
export function resizeBilinear(gray, width, height, outWidth, outHeight) {
  let pixels = gray;
  const vertical = coefficients(height, outHeight);
  // Resample.c runs the horizontal pass only on the rows the vertical pass will read.
  const firstRow = vertical.bounds[0];
  const lastRow = vertical.bounds[2 * outHeight - 2] + vertical.bounds[2 * outHeight - 1];
  let rowOffset = 0;
  if (outWidth !== width) {
    pixels = resampleHorizontal(gray, width, firstRow, lastRow, outWidth, coefficients(width, outWidth));
    rowOffset = firstRow;
  }
  if (outHeight !== height) {
    return resampleVertical(pixels, outWidth, rowOffset, outHeight, vertical);
  }
  return pixels === gray ? Uint8Array.from(gray) : pixels;
}

// precompute_coeffs + normalize_coeffs_8bpc: for each output pixel, the first input pixel it reads, how
// many, and their weights in fixed point (rounded half away from zero, then truncated toward zero).
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = 1.0 * filterScale;  // the bilinear filter's support is 1
  const kernelSize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * kernelSize);
  const inverseScale = 1.0 / filterScale;
  for (let out = 0; out < outSize; out++) {
    const center = (out + 0.5) * scale;
    const first = Math.max(0, Math.trunc(center - support + 0.5));
    const count = Math.min(inSize, Math.trunc(center + support + 0.5)) - first;
    const k = new Float64Array(count);
    let total = 0.0;
    for (let x = 0; x < count; x++) {
      k[x] = triangle((x + first - center + 0.5) * inverseScale);
      total += k[x];
    }
    for (let x = 0; x < count; x++) {
      const w = total !== 0.0 ? k[x] / total : k[x];
      weights[out * kernelSize + x] = Math.trunc(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[2 * out] = first;
    bounds[2 * out + 1] = count;
  }
  return { bounds, weights, kernelSize };
}

function triangle(x) {
  x = Math.abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// clip8: the fixed-point sum back to a byte.
function clip8(sum) {
  return Math.min(255, Math.max(0, Math.floor(sum / (1 << PRECISION_BITS))));
}

function resampleHorizontal(gray, width, firstRow, lastRow, outWidth, { bounds, weights, kernelSize }) {
  const out = new Uint8Array((lastRow - firstRow) * outWidth);
  for (let y = firstRow; y < lastRow; y++) {
    const line = y * width, outLine = (y - firstRow) * outWidth;
    for (let xx = 0; xx < outWidth; xx++) {
      const first = bounds[2 * xx], count = bounds[2 * xx + 1], k = xx * kernelSize;
      let sum = ONE_HALF;
      for (let x = 0; x < count; x++) sum += gray[line + first + x] * weights[k + x];
      out[outLine + xx] = clip8(sum);
    }
  }
  return out;
}

function resampleVertical(pixels, width, rowOffset, outHeight, { bounds, weights, kernelSize }) {
  const out = new Uint8Array(outHeight * width);
  for (let yy = 0; yy < outHeight; yy++) {
    const first = bounds[2 * yy] - rowOffset, count = bounds[2 * yy + 1], k = yy * kernelSize;
    for (let x = 0; x < width; x++) {
      let sum = ONE_HALF;
      for (let y = 0; y < count; y++) sum += pixels[(first + y) * width + x] * weights[k + y];
      out[yy * width + x] = clip8(sum);
    }
  }
  return out;
}

/** The pixels of `gray` (width wide) inside [left, top, right, bottom), as Image.crop gives them. */
export function crop(gray, width, [left, top, right, bottom]) {
  const out = new Uint8Array((right - left) * (bottom - top));
  for (let y = top; y < bottom; y++) out.set(gray.subarray(y * width + left, y * width + right), (y - top) * (right - left));
  return out;
}
