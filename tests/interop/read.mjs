// Independent check of llmc's Parquet files: reads FILE with hyparquet (a JavaScript Parquet
// implementation unrelated to llmc) and writes what it sees to OUTDIR:
//   OUTDIR/meta.json  — schema leaves, codecs, row groups, key-value metadata, every row
//                       (name, dtype, shape, chunk, byte length) and per tensor its data file
//   OUTDIR/t<i>.bin   — tensor i's bytes, its chunks concatenated in row order
// Usage: node read.mjs FILE.parquet OUTDIR
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects, parquetSchema } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'

const [file, outdir] = process.argv.slice(2)
if (!file || !outdir) {
  console.error('usage: node read.mjs FILE.parquet OUTDIR')
  process.exit(2)
}
const buffer = await asyncBufferFromFile(file)
const metadata = await parquetMetadataAsync(buffer)
// utf8: false keeps the unannotated `data` column as raw bytes (name/dtype are STRING-annotated).
const rows = await parquetReadObjects({ file: buffer, compressors, utf8: false })

const leaves = []
const walk = (node, path) => {
  if (!node.children.length) {
    leaves.push({ path: path.join('.'), type: node.element.type, repetition: node.element.repetition_type })
  }
  for (const c of node.children) walk(c, [...path, c.element.name])
}
walk(parquetSchema(metadata), [])

const out = {
  num_rows: Number(metadata.num_rows),
  created_by: metadata.created_by,
  row_groups: metadata.row_groups.map(g => ({
    num_rows: Number(g.num_rows),
    codecs: g.columns.map(c => c.meta_data.codec),
  })),
  leaves,
  kv: Object.fromEntries((metadata.key_value_metadata ?? []).map(({ key, value }) => [key, value ?? ''])),
  rows: [],
  tensors: [],
}
const pieces = new Map()
for (const r of rows) {
  const data = r.data instanceof Uint8Array ? r.data : new Uint8Array(0)
  out.rows.push({
    name: r.name,
    dtype: r.dtype,
    shape: (r.shape ?? []).map(Number),
    chunk: Number(r.chunk),
    len: data.length,
  })
  if (!pieces.has(r.name)) pieces.set(r.name, [])
  pieces.get(r.name).push(data)
}
let i = 0
for (const [name, parts] of pieces) {
  const fname = `t${i++}.bin`
  writeFileSync(join(outdir, fname), Buffer.concat(parts.map(p => Buffer.from(p.buffer, p.byteOffset, p.byteLength))))
  out.tensors.push({ name, file: fname })
}
writeFileSync(join(outdir, 'meta.json'), JSON.stringify(out, null, 1))
console.log(`read ${out.num_rows} rows, ${out.tensors.length} tensors, ${out.row_groups.length} row groups`)
