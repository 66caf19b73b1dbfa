// Writes a tensor file in llmc's Parquet schema with hyparquet-writer (an independent writer),
// so llmc's reader can be checked against files it did not write.
// Usage: node write.mjs SPEC.json OUT.parquet
// SPEC: { codec: "UNCOMPRESSED"|"SNAPPY"|"GZIP"|"ZSTD", nullable: bool, rowGroupSize: n, pageSize: n,
//         encodings: optional {column: encoding} (e.g. {data: "DELTA_BYTE_ARRAY"}), kv: {k: v},
//         rows: [{ name, dtype, shape: [..], chunk, file, offset, length }] }
// Row data is read from `file` (bytes [offset, offset+length)).
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { gzipSync } from 'node:zlib'
import { parquetWriteFile } from 'hyparquet-writer'

const [specPath, outPath] = process.argv.slice(2)
if (!specPath || !outPath) {
  console.error('usage: node write.mjs SPEC.json OUT.parquet')
  process.exit(2)
}
const spec = JSON.parse(readFileSync(specPath, 'utf8'))
const files = new Map()
const bytesOf = (file, offset, length) => {
  if (!files.has(file)) files.set(file, readFileSync(file))
  return new Uint8Array(files.get(file).subarray(offset, offset + length))
}

// ZSTD compressor: the zstd command-line tool when present, else frames of raw (stored) blocks,
// which every conformant ZSTD decoder must accept.
function zstdRawFrame(input) {
  const blocks = []
  const header = Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38)  // magic, FHD, window 128 KiB
  blocks.push(header)
  let pos = 0
  do {
    const n = Math.min(input.length - pos, 1 << 17)
    const last = pos + n >= input.length ? 1 : 0
    const h = (n << 3) | last  // block type 0 = raw
    blocks.push(Uint8Array.of(h & 0xff, (h >> 8) & 0xff, (h >> 16) & 0xff), input.subarray(pos, pos + n))
    pos += n
  } while (pos < input.length)
  return new Uint8Array(Buffer.concat(blocks))
}
function zstdCompress(input) {
  try {
    return new Uint8Array(execFileSync('zstd', ['-q', '-c', '-3'], { input, maxBuffer: 1 << 30 }))
  } catch {
    return zstdRawFrame(input)
  }
}

const rep = spec.nullable ? 'OPTIONAL' : 'REQUIRED'
const schema = [
  { name: 'schema', num_children: 5 },
  { name: 'name', type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: rep },
  { name: 'dtype', type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: rep },
  { name: 'shape', repetition_type: rep, converted_type: 'LIST', num_children: 1 },
  { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
  { name: 'element', type: 'INT64', repetition_type: 'REQUIRED' },
  { name: 'chunk', type: 'INT32', repetition_type: rep },
  { name: 'data', type: 'BYTE_ARRAY', repetition_type: rep },
]
const rows = spec.rows
parquetWriteFile({
  filename: outPath,
  schema,
  codec: spec.codec ?? 'SNAPPY',
  compressors: { ZSTD: zstdCompress, GZIP: input => new Uint8Array(gzipSync(input)) },
  rowGroupSize: spec.rowGroupSize ?? 1000,
  pageSize: spec.pageSize ?? 1048576,
  kvMetadata: Object.entries(spec.kv ?? {}).map(([key, value]) => ({ key, value })),
  columnData: [
    { name: 'name', data: rows.map(r => r.name) },
    { name: 'dtype', data: rows.map(r => r.dtype) },
    { name: 'shape', data: rows.map(r => r.shape.map(BigInt)) },
    { name: 'chunk', data: rows.map(r => r.chunk) },
    { name: 'data', data: rows.map(r => bytesOf(r.file, r.offset, r.length)) },
  ].map(c => spec.encodings?.[c.name] ? { ...c, encoding: spec.encodings[c.name] } : c),
})
console.log(`wrote ${rows.length} rows to ${outPath}`)
