"""The batch archive service of ``mcgr infer``: streamed inputs, one result folder per input
committed whole, the run manifest, and resume. The algorithm it runs is :mod:`mcgr.infer`.

    inputs.py      what a run reads: files, folders, globs, manifest files, as InputItem
    layout.py      the names of the output folder's files, and ArchiveError
    store.py       result folders: verify, identity, the manifest, commit
    run_folder.py  the output folder of one run: lock, resume, run.json, clean-up
    engine.py      one input through the pipeline into staging; the local engine (serial and
                   overlapped: a prefetch reader and a write-behind writer around the networks)
    ray_engine.py  the same per-input work on Ray actors
    cli.py         the ``mcgr infer`` command line

Layout of an output folder ``OUT``::

    OUT/manifest.jsonl          one JSON line per input (ok / error / skipped), appended as inputs finish
    OUT/run.json                the settings that define the results (checked by --resume)
    OUT/<key>/<stem>.*          write_outputs' files: the run's output set (``--outputs``; default
                                mask.png, json, seg.dcm, overlay.png; prob.png, uncertainty.png asked for)
    OUT/<key>/.done             the input's record (the same as its manifest line), with file sizes
    OUT/.mcgr-staging/          work in progress; removed at the start and the end of every run
    (OUT itself is flock'ed while a run writes into it)

``<key>`` mirrors the input: a file inside a folder given on the command line keeps its path
relative to that folder; any other file is named by its own name; a manifest row may give an
``id``. Known image extensions (.dcm .dicom .dic .png .tif .tiff .npy) are dropped from the key.

Commit protocol (per input): a worker writes every file and ``.done`` into a fresh folder under
``.mcgr-staging``; the driver then appends the manifest line (flushed and fsynced) and renames the
folder onto ``OUT/<key>``. A result folder is therefore complete or absent, never partial, and every
result folder has its manifest line. ``--resume`` keeps the manifest lines whose result folder
still verifies (``.done`` names the same result id, every file exists with the recorded size),
drops the rest (errors, lines of folders that were never moved into place, a line cut by a kill)
and redoes those inputs; inputs whose folder verifies are skipped without a new line, so no input
is ever listed twice. A result verifies when its input still has the content it was computed from
(``input_sha256``: the sha256 of the input file, streamed) and every output still has its recorded
size and sha256 (``sha256``: {file name: digest}, in ``.done`` and the manifest line): an input
replaced by another image, or a result overwritten (even by zeros of the same size), is redone.
``input_sha256`` is of the bytes that were read (:func:`mcgr.archive.store.read_hashed`), and a
result whose identity (:func:`mcgr.archive.store.result_identity`: the settings that change a
result, and the input's spacing) differs from the resumed run's is redone too, its earlier line
dropped when the run closes.
The output set (``--outputs``, ``--save-prob``) is part of that identity: a resume asking for
another set redoes every input whose result holds a different one.

Folder scanning stays inside the folder given: a symlink to a folder outside it is not followed
(a symlink to a single file is, as the file was named by whoever made the link). mcgr's own outputs
are never taken as inputs: result folders (holding ``.done``), files named like
:func:`mcgr.io.write_outputs`' and ``mcgr demo``'s outputs
(:data:`mcgr.archive.layout.OUTPUT_SUFFIXES`), so pointing a run at a results folder, or at a study
folder holding one, reads only the mammograms.
"""
