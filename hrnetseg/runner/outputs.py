"""The runner's output folder, as ais_bench writes it: OUTPUT/DIRNAME/<stem>_<k>.bin (or .npy, .txt), one
float32 file per input and model output, and OUTPUT/DIRNAME_summary.json (the names: layout.py).

The stem is the input file's name up to its first dot. BIN is the raw C-order data; NPY keeps the batch axis
(1 x 19 x h x w); TXT is the array as rows of its last axis, every value written `%f` (6 decimals: lossy)
followed by a space, one row per line.

The folder is locked for the run (a second run into it stops at once), and a run that fails or is
interrupted removes what it wrote (see RunOutputs).
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Dict, Iterator, List, Sequence

import numpy as np

from hrnetseg.runner.layout import OUTPUT_NAME, device_entry, output_name, output_stem, summary_path_for
from hrnetseg.runner.summary import output_path_line, print_lines
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import (
    atomic_path,
    check_output_file,
    check_outputs_apart,
    make_output_folder,
    remove_quietly,
    remove_stale_temporaries,
    write_target,
    write_text_atomic,
)
from hrnetseg.util.locks import output_lock

OUTPUT_DTYPE = "float32"   # what the runner writes, whatever the backend computes in (recorded in the summary)


class RunOutputs(object):
    """OUTPUT/DIRNAME and OUTPUT/DIRNAME_summary.json for one run, under the folder's lock.

    What a failed or interrupted run wrote is removed on the way out: the files it wrote, the summary, and
    the folders it created; files that were there before stay. A summary of an earlier run is removed just
    before the first write, since this run's files replace the ones it described; output files this run would
    not replace are refused then (see refuse_leftovers).
    """

    def __init__(self, output: str, dirname: str, outfmt: str) -> None:
        self.output, self.folder = output, os.path.join(output, dirname)
        self.summary = summary_path_for(self.folder)
        self.outfmt = outfmt
        self.written: List[str] = []
        self._created_folder = False
        self._begun = False   # the earlier summary was removed: this run now replaces what it described

    def check(self, input_folder: str) -> None:
        """Refusals before the lock and the model load: outputs that cannot be written."""
        if not self.output:
            raise UserError("--output is an empty name: give a folder")
        for path, flag in ((self.output, "--output"), (self.folder, "--output_dirname")):
            if os.path.lexists(path) and not os.path.isdir(path):
                make_output_folder(path, flag)   # its one-line "exists and is ..., not a folder"
        if os.path.isdir(self.folder) and os.path.samefile(self.folder, input_folder):
            raise UserError("the output folder {} is the input folder: choose another --output or --output_dirname"
                            .format(self.folder))
        if os.path.isdir(self.output):   # else it is made, empty, after the lock
            check_output_file(self.summary, "summary")

    def check_apart(self, ids: Sequence[str], inputs: Dict[str, object]) -> None:
        """Refuse, before the model loads, a file this run would write that is one of its inputs (`inputs`:
        role -> path or paths, as check_outputs_apart takes them) or a lock it holds: the output files of these
        inputs that are there now (whatever the output number: how many outputs the model has is not known
        yet; a file not there yet is nobody's input) and the summary."""
        stems = {output_stem(sample_id) for sample_id in ids}
        present = []
        if os.path.isdir(self.folder):
            for name in os.listdir(self.folder):
                match = OUTPUT_NAME.match(name)
                if match and match.group("stem") in stems and match.group("ext") == self.outfmt.lower():
                    present.append(os.path.join(self.folder, name))
        check_outputs_apart({"the output file": sorted(present), "the summary": self.summary}, inputs,
                            locked={"the output folder": self.folder})

    @contextlib.contextmanager
    def open(self) -> Iterator["RunOutputs"]:
        output_existed = os.path.isdir(self.output)   # the lock file, beside the folder, may create --output
        try:
            with output_lock(self.folder):
                try:
                    self._prepare()
                    yield self
                except BaseException:
                    self._remove_partial()
                    raise
        except BaseException:
            if not output_existed:
                _remove_empty_folder(self.output)
            raise

    def _prepare(self) -> None:
        make_output_folder(self.output, "--output")
        self._created_folder = make_output_folder(self.folder, "--output_dirname")
        print_lines(output_path_line(self.folder))   # where ais_bench prints it: the folder made, nothing run yet
        remove_stale_temporaries(self.folder)

    def begin(self, ids: Sequence[str], indices: Sequence[int]) -> None:
        """Just before the first write: refuse leftovers (see refuse_leftovers), then remove the summary of an
        earlier run, since this run's files replace the ones it described. A run refused before this point
        leaves the earlier run's files and summary as they were."""
        self.refuse_leftovers(ids, indices)
        self._begun = True
        remove_quietly(write_target(self.summary))

    def refuse_leftovers(self, ids: Sequence[str], indices: Sequence[int]) -> None:
        """Refuse, before anything is written, output files in the folder that this run would not replace.

        They would sit under this run's summary, and the postprocess, which pairs every <id>_<n> file in the
        folder with its label, would evaluate them as this run's: an earlier run on more images or another
        model would silently mix into the mIoU.
        """
        mine = {os.path.basename(self.path_for(sample_id, k)) for sample_id in ids for k in indices}
        others = sorted(name for name in os.listdir(self.folder) if OUTPUT_NAME.match(name) and name not in mine)
        devices = sorted(name for name in os.listdir(self.folder) if device_entry(name))
        if devices:
            raise UserError("{} holds {} of an earlier --device 0,1 run, which the postprocess would read with this "
                            "run's outputs: remove it or choose another --output_dirname".format(self.folder,
                                                                                                devices[0]))
        if others:
            raise UserError("{} holds {} output file{} that this run would not replace (e.g. {}), from an earlier "
                            "run: the postprocess would evaluate them as this run's; remove them or choose another "
                            "--output_dirname".format(self.folder, len(others), "" if len(others) == 1 else "s",
                                                      others[0]))

    def path_for(self, sample_id: str, k: int) -> str:
        return os.path.join(self.folder, output_name(sample_id, k, self.outfmt))

    def write(self, sample_id: str, k: int, array: np.ndarray) -> str:
        """Write one input's output k (C x h x w, or 1 x C x h x w); its path."""
        path = self.path_for(sample_id, k)
        write_output(path, array, self.outfmt)
        self.written.append(path)
        return path

    def write_summary(self, summary: dict) -> None:
        write_text_atomic(self.summary, json.dumps(summary, indent=1) + "\n")

    def _remove_partial(self) -> None:
        for path in self.written:
            remove_quietly(path)
        if self._begun:
            remove_quietly(write_target(self.summary))
        if self._created_folder:
            _remove_empty_folder(self.folder)


def _remove_empty_folder(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass   # not empty (files that were there before stay) or already gone


def check_output_stems(ids: Sequence[str]) -> None:
    """Two inputs whose names agree up to their first dot would write the same output files: refuse them."""
    seen: Dict[str, str] = {}
    for sample_id in ids:
        other = seen.setdefault(output_stem(sample_id), sample_id)
        if other != sample_id:
            raise UserError("inputs {0}.bin and {1}.bin would both write {2}_<n> (output files are named by the "
                            "input name up to its first dot, as ais_bench names them)".format(
                                other, sample_id, output_stem(sample_id)))


def write_output(path: str, array: np.ndarray, outfmt: str) -> None:
    """One input's output as a float32 file: the raw C-order bytes (BIN), a .npy file with the batch axis
    (NPY: 1 x C x h x w) or text (TXT, see text_rows)."""
    array = np.ascontiguousarray(array, dtype=OUTPUT_DTYPE)   # the summary says float32: make it so
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            if outfmt == "NPY":
                np.save(fh, array.reshape((1,) + array.shape[-3:]) if array.ndim == 3 else array)
            elif outfmt == "TXT":
                for line in text_rows(array):
                    fh.write(line)
            else:
                _write_array(fh, array)


def _write_array(fh, array: np.ndarray) -> None:
    fh.write(array.data)


def text_rows(array: np.ndarray) -> Iterator[bytes]:
    """ais_bench's TXT: the array reshaped to (-1, last axis), each row one line of values written `%f`
    (floats; `%d` otherwise), each followed by a space."""
    rows = array.reshape(-1, array.shape[-1]) if array.ndim else array.reshape(1, 1)
    fmt = ("%f " if rows.dtype.kind == "f" else "%d ") * rows.shape[1] + "\n"
    for row in rows:
        yield (fmt % tuple(row.tolist())).encode("ascii")
