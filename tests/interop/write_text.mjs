// Writes a calibration dataset in the shape of a HuggingFace datasets Parquet shard with
// hyparquet-writer (an independent writer), so llmc's text-column reader is checked against
// files it did not write. Columns: id INT64, text UTF8 (OPTIONAL: some rows null or blank),
// tags LIST<UTF8>, source UTF8.
// Usage: node write_text.mjs TEXT_FILE OUT.parquet CODEC ROW_GROUP_SIZE PAGE_SIZE [ENCODING]
// TEXT_FILE is split into documents at blank lines; the first 120 documents are used.
import { readFileSync } from 'node:fs'
import { gzipSync } from 'node:zlib'
import { parquetWriteFile } from 'hyparquet-writer'

const [textPath, outPath, codec = 'SNAPPY', rg = '1000', page = '1048576', encoding] = process.argv.slice(2)
if (!textPath || !outPath) {
  console.error('usage: node write_text.mjs TEXT_FILE OUT.parquet [CODEC] [ROW_GROUP_SIZE] [PAGE_SIZE] [ENCODING]')
  process.exit(2)
}
const docs = readFileSync(textPath, 'utf8').split(/\n\s*\n/).slice(0, 120)
// Every 7th row null, every 11th blank: readers must skip both.
const text = docs.map((d, i) => (i % 7 === 3 ? null : i % 11 === 5 ? '  \n' : d))
const schema = [
  { name: 'schema', num_children: 4 },
  { name: 'id', type: 'INT64', repetition_type: 'REQUIRED' },
  { name: 'text', type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'OPTIONAL' },
  { name: 'tags', repetition_type: 'OPTIONAL', converted_type: 'LIST', num_children: 1 },
  { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
  { name: 'element', type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'REQUIRED' },
  { name: 'source', type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'REQUIRED' },
]
const textColumn = { name: 'text', data: text }
if (encoding) textColumn.encoding = encoding
parquetWriteFile({
  filename: outPath,
  schema,
  codec,
  compressors: { GZIP: input => new Uint8Array(gzipSync(input)) },
  rowGroupSize: Number(rg),
  pageSize: Number(page),
  columnData: [
    { name: 'id', data: docs.map((_, i) => BigInt(i)) },
    textColumn,
    { name: 'tags', data: docs.map((_, i) => (i % 2 ? ['calib', `n${i}`] : [])) },
    { name: 'source', data: docs.map((_, i) => (i % 3 ? 'brown' : 'wiki')) },
  ],
})
console.log(`wrote ${docs.length} rows to ${outPath}`)
