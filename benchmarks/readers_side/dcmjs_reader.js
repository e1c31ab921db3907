// RT-STRUCT -> masks the way the OHIF viewer's RT path does it, for benchmarks/readers.py.
//
// usage: node dcmjs_reader.js RTSS CT_DIR OUT_DIR   (NODE_PATH must point at node_modules)
//
// dcmjs parses and naturalizes the RT-STRUCT and the CT headers, as OHIF's RT loader does. Each
// contour goes to the CT slice its ContourImageSequence references (by SOP Instance UID, from the
// dataset or, when the dataset's is empty, the file meta), else to the slice nearest its plane.
// A voxel is set when its centre lies inside any polygon of its slice (union), tested the way
// cornerstone's contour-to-labelmap conversion does: project to 2D by dropping the coordinate
// shared by the polygon's points, then an even-odd crossing test. Output: OUT_DIR/<n>.raw
// (uint8, axes (slice, row, column), slices sorted ascending along the slice normal) and
// OUT_DIR/manifest.json with the grid in SimpleITK conventions.
"use strict";

const fs = require("fs");
const path = require("path");
const dcmjs = require("dcmjs");

function readNatural(file, headerOnly) {
  const buffer = fs.readFileSync(file);
  const arrayBuffer = buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
  const options = headerOnly ? { untilTag: "7FE00010", includeUntilTagValue: false } : {};
  const message = dcmjs.data.DicomMessage.readFile(arrayBuffer, options);
  const dataset = dcmjs.data.DicomMetaDictionary.naturalizeDataset(message.dict);
  const meta = dcmjs.data.DicomMetaDictionary.naturalizeDataset(message.meta);
  return { dataset, meta };
}

const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];

function loadSlices(ctDir) {
  const slices = [];
  for (const name of fs.readdirSync(ctDir).sort()) {
    const file = path.join(ctDir, name);
    if (!fs.statSync(file).isFile()) continue;
    const { dataset, meta } = readNatural(file, true);
    if (!dataset.ImagePositionPatient) continue;
    slices.push({
      uid: dataset.SOPInstanceUID || meta.MediaStorageSOPInstanceUID,
      ipp: dataset.ImagePositionPatient.map(Number),
      iop: dataset.ImageOrientationPatient.map(Number),
      spacing: dataset.PixelSpacing.map(Number), // [between rows, between columns]
      rows: dataset.Rows,
      columns: dataset.Columns,
    });
  }
  const normal = cross(slices[0].iop.slice(0, 3), slices[0].iop.slice(3));
  slices.sort((a, b) => dot(normal, a.ipp) - dot(normal, b.ipp));
  return { slices, normal };
}

function gridOf(slices, normal) {
  const first = slices[0];
  const n = slices.length;
  let sliceDir = normal;
  let sliceMm = 1.0;
  if (n > 1) {
    const step = sub(slices[n - 1].ipp, first.ipp).map((v) => v / (n - 1));
    sliceMm = Math.sqrt(dot(step, step));
    sliceDir = step.map((v) => v / sliceMm);
  }
  const r = first.iop.slice(0, 3);
  const c = first.iop.slice(3);
  return {
    size_xyz: [first.columns, first.rows, n],
    spacing_xyz: [first.spacing[1], first.spacing[0], sliceMm],
    origin_xyz: first.ipp,
    direction_xyz: [r[0], c[0], sliceDir[0], r[1], c[1], sliceDir[1], r[2], c[2], sliceDir[2]],
  };
}

// cornerstone's isPointInsidePolyline: even-odd crossings of a ray towards -x
function containsPoint(polygon, x, y) {
  let inside = false;
  for (let i = 0, n = polygon.length; i < n; i++) {
    const [xi, yi] = polygon[i];
    const [xj, yj] = polygon[(i + 1) % n];
    if (yi === yj && y !== yi) continue;
    if (((yi < y && yj >= y) || (yj < y && yi >= y)) && xi + ((y - yi) / (yj - yi)) * (xj - xi) < x) {
      inside = !inside;
    }
  }
  return inside;
}

// The same crossing test for a whole row of centres at height y: the edges' crossing x values
// (computed with the same expression), sorted; a centre at x is inside when an odd number of
// them is < x, exactly as containsPoint decides.
function crossingsAt(polygon, y) {
  const xs = [];
  for (let i = 0, n = polygon.length; i < n; i++) {
    const [xi, yi] = polygon[i];
    const [xj, yj] = polygon[(i + 1) % n];
    if (yi === yj && y !== yi) continue;
    if ((yi < y && yj >= y) || (yj < y && yi >= y)) xs.push(xi + ((y - yi) / (yj - yi)) * (xj - xi));
  }
  return Float64Array.from(xs).sort();
}

function countBelow(sorted, x) {
  let lo = 0, hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function sharedDimension(points) {
  const test = points.slice(0, 3);
  for (let d = 0; d < 3; d++) {
    if (test.every((p) => p[d] === test[0][d])) return d;
  }
  throw new Error("cannot find a shared dimension for the polyline (oblique plane)");
}

function sliceOfContour(contour, points, slices, byUid, normal) {
  const refs = contour.ContourImageSequence || [];
  for (const ref of refs) {
    if (byUid.has(ref.ReferencedSOPInstanceUID)) return byUid.get(ref.ReferencedSOPInstanceUID);
  }
  const along = dot(normal, points[0]);
  let best = 0;
  for (let k = 1; k < slices.length; k++) {
    if (Math.abs(dot(normal, slices[k].ipp) - along) < Math.abs(dot(normal, slices[best].ipp) - along)) best = k;
  }
  return best;
}

function fillPolygon(mask, k, points, slice) {
  const d = sharedDimension(points);
  const polygon = points.map((p) => [p[(d + 1) % 3], p[(d + 2) % 3]]);
  const rowDir = slice.iop.slice(0, 3); // direction of increasing column index
  const colDir = slice.iop.slice(3); // direction of increasing row index
  const [rowMm, colMm] = slice.spacing;
  const cs = points.map((p) => dot(sub(p, slice.ipp), rowDir) / colMm);
  const rs = points.map((p) => dot(sub(p, slice.ipp), colDir) / rowMm);
  const r0 = Math.max(0, Math.floor(Math.min(...rs)) - 1), r1 = Math.min(slice.rows - 1, Math.ceil(Math.max(...rs)) + 1);
  const c0 = Math.max(0, Math.floor(Math.min(...cs)) - 1), c1 = Math.min(slice.columns - 1, Math.ceil(Math.max(...cs)) + 1);
  const plane = k * slice.rows * slice.columns;
  // voxel centre (r, c) = IPP + c * colMm * rowDir + r * rowMm * colDir, projected like the polygon
  const a = (d + 1) % 3, b = (d + 2) % 3;
  for (let r = r0; r <= r1; r++) {
    const rowConstant = rowDir[b] === 0; // then every centre of row r has the same y
    const y0 = slice.ipp[b] + r * rowMm * colDir[b];
    const crossings = rowConstant ? crossingsAt(polygon, y0) : null;
    for (let c = c0; c <= c1; c++) {
      const x = slice.ipp[a] + c * colMm * rowDir[a] + r * rowMm * colDir[a];
      const inside = rowConstant
        ? countBelow(crossings, x) % 2 === 1
        : containsPoint(polygon, x, slice.ipp[b] + c * colMm * rowDir[b] + r * rowMm * colDir[b]);
      if (inside) mask[plane + r * slice.columns + c] = 1;
    }
  }
}

function rasterise(roiContour, slices, byUid, normal) {
  const { rows, columns } = slices[0];
  const mask = new Uint8Array(slices.length * rows * columns);
  for (const contour of roiContour.ContourSequence || []) {
    if (contour.ContourGeometricType !== "CLOSED_PLANAR") continue;
    const data = contour.ContourData.map(Number);
    const points = [];
    for (let i = 0; i + 2 < data.length; i += 3) points.push([data[i], data[i + 1], data[i + 2]]);
    if (points.length < 3) continue;
    const k = sliceOfContour(contour, points, slices, byUid, normal);
    fillPolygon(mask, k, points, slices[k]);
  }
  return mask;
}

function dcmjsVersion() {
  const main = require.resolve("dcmjs");
  let dir = path.dirname(main);
  while (!fs.existsSync(path.join(dir, "package.json"))) dir = path.dirname(dir);
  return JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")).version;
}

function main() {
  const [rtssPath, ctDir, outDir] = process.argv.slice(2);
  fs.mkdirSync(outDir, { recursive: true });
  const { slices, normal } = loadSlices(ctDir);
  const byUid = new Map(slices.map((s, k) => [s.uid, k]));
  const { dataset } = readNatural(rtssPath, false);
  const contours = new Map((dataset.ROIContourSequence || []).map((c) => [c.ReferencedROINumber, c]));
  const manifest = { reader: "dcmjs", version: dcmjsVersion(), grid: gridOf(slices, normal), rois: {} };
  (dataset.StructureSetROISequence || []).forEach((roi, n) => {
    try {
      const mask = rasterise(contours.get(roi.ROINumber) || {}, slices, byUid, normal);
      fs.writeFileSync(path.join(outDir, `${n}.raw`), mask);
      manifest.rois[roi.ROIName] = { raw: `${n}.raw` };
    } catch (error) {
      manifest.rois[roi.ROIName] = { error: `${error.name}: ${error.message}` };
    }
  });
  fs.writeFileSync(path.join(outDir, "manifest.json"), JSON.stringify(manifest, null, 1));
}

main();
