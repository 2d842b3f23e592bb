"""The search's sample read from the training file (components/train.py ``read_sample``): the very rows the
search drew from the whole table before, so scores do not move, held one row group at a time."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.synthetic import churn
from components.train import read_sample, sample_rows

COLUMNS = ["age", "plan", "signup_date", "churned"]


def test_the_sample_read_from_the_file_is_the_sample_of_the_whole_table(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pandas(churn(12_000, seed=3), preserve_index=False), path, row_group_size=1_000)
    whole = pd.read_parquet(path, columns=COLUMNS)
    for rows, seed in ((2_500, 0), (999, 7)):
        got = read_sample(str(path), COLUMNS, rows, seed)
        assert len(got) == rows
        pd.testing.assert_frame_equal(got, sample_rows(whole, None, rows, seed).reset_index(drop=True))
    pd.testing.assert_frame_equal(read_sample(str(path), COLUMNS, 50_000, 0), whole)  # fewer rows than the bound: all
