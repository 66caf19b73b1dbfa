# Dev-time generator of tests/data/calib-parquet/pyarrow_*.parquet (needs pyarrow; run from the
# repo root with OUT=<dir>). Same documents and null/blank rule as write_text.mjs.
import json, os, re, sys
import pyarrow as pa, pyarrow.parquet as pq
out = os.environ["OUT"]
docs = re.split(r"\n\s*\n", open("data/calibration.txt", encoding="utf-8").read())[:120]
text = [None if i % 7 == 3 else ("  \n" if i % 11 == 5 else d) for i, d in enumerate(docs)]
t = pa.table({
    "id": pa.array(range(len(docs)), pa.int64()),
    "text": pa.array(text, pa.large_string()),
    "meta": pa.array([{"src": "brown" if i % 3 else "wiki", "n": i} for i in range(len(docs))]),
    "messages": pa.array([[{"role": "user", "content": "hi"}]] * len(docs)),
})
pq.write_table(t, f"{out}/pyarrow_default.parquet")
pq.write_table(t, f"{out}/pyarrow_zstd_v2.parquet", compression="zstd", use_dictionary=False,
               data_page_version="2.0", row_group_size=30, data_page_size=4096)
pq.write_table(t, f"{out}/pyarrow_dict_gzip.parquet", compression="gzip", use_dictionary=True,
               row_group_size=50, write_statistics=True, write_page_index=True)
print(pa.__version__)
for f in sorted(os.listdir(out)):
    m = pq.ParquetFile(f"{out}/{f}").metadata
    print(f, m.num_row_groups, m.created_by, [m.row_group(0).column(c).encodings for c in range(m.num_columns)])
