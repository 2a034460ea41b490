"""The edge's threads (collab_eval.edge_pool) beside the server's passes: the same records
whatever their number, a failure in a thread fails its sample alone, and the original's size
(bytes_original) never holds up the server."""
import io
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from collab_eval.edge import Codec, sanitize
from collab_eval.edge_pool import CROP, GLOBAL, ORIGINAL, EdgePool, default_workers
from collab_eval.pipeline import Limits, Method, RunCaches, SampleInput, run_batches
from collab_eval.policy import Policy
from tests.test_batching import assert_same

QUESTIONS = ["what is written", "is there a red square in the image ?", "a", "where", "how many", "read the sign"]


# ----- the pool on its own ----------------------------------------------------------------------
def test_urgent_tasks_run_first_and_an_unstarted_task_runs_where_it_is_awaited():
    ran, gate = [], threading.Event()
    with EdgePool(1) as edge:
        edge.submit(CROP, gate.wait)  # holds the only thread until the others are queued
        later = [edge.submit(priority, ran.append, name)
                 for priority, name in [(ORIGINAL, "original"), (GLOBAL, "global"), (CROP, "crop"), (GLOBAL, "g2")]]
        gate.set()
        while not all(task.done() for task in later):  # left to the thread (waiting would run them here)
            time.sleep(0.005)
    assert ran == ["crop", "global", "g2", "original"]

    inline = EdgePool(0)
    here = inline.submit(GLOBAL, threading.current_thread)
    assert not here.done() and here.result() is threading.current_thread()  # run by the thread that waited

    with EdgePool(1) as edge:
        blocker = threading.Event()
        edge.submit(CROP, blocker.wait)
        waiting = edge.submit(GLOBAL, threading.current_thread)  # queued behind the blocked thread
        assert waiting.result() is threading.current_thread()  # not left in the queue while the caller idles
        blocker.set()


def test_a_tasks_exception_reaches_whoever_waits_for_it():
    def broken():
        raise ValueError("no such image")

    with EdgePool(2) as edge:
        task = edge.submit(GLOBAL, broken)
        with pytest.raises(ValueError, match="no such image"):
            task.result()
        assert edge.submit(GLOBAL, sum, [1, 2]).result() == 3  # the thread lives on


def test_strict_decoding_and_quiet_pil_hold_until_the_last_thread_leaves(monkeypatch):
    """Two threads' sections ending out of order (as decodes on the edge's threads do): the first
    to leave must not turn lenient decoding or PIL's warnings back on under the other, and a
    filter set meanwhile by someone else survives."""
    import warnings

    from PIL import ImageFile

    from collab_eval.edge import quiet_pil, strict_decoding
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as after lmms-eval's import
    first, second = strict_decoding(), strict_decoding()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the second thread still decodes strictly
    second.__exit__(None, None, None)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True

    with warnings.catch_warnings():
        before = list(warnings.filters)
        first, second = quiet_pil(), quiet_pil()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        warnings.filterwarnings("error", message="set meanwhile")
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn_explicit("palette", UserWarning, "Image.py", 1, module="PIL.Image")
        assert not caught  # still quiet for the second thread
        second.__exit__(None, None, None)
        assert warnings.filters[1:] == before and warnings.filters[0][1].pattern == "set meanwhile"


# ----- the pipeline with the pool ----------------------------------------------------------------
def documents():
    """Real images of different sizes; one original shared by two documents (its size and
    generic map computed once), a truncated PNG and a document whose visuals raise."""
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in [(210, 500), (400, 260), (120, 90), (333, 517), (64, 700)]]
    buf = io.BytesIO()
    images[1].save(buf, format="PNG")
    truncated = buf.getvalue()[:len(buf.getvalue()) // 2]
    return [images[0], images[1], truncated, images[2], images[0], images[3], "raise", images[4]]


def visuals_of(doc):
    if doc == "raise":
        raise RuntimeError("doc_to_visual failed")
    return [doc]


def samples_of(docs):
    return [SampleInput(key=f"t/{i}", scope="t", question=QUESTIONS[i % len(QUESTIONS)],
                        limits=Limits(max_new_tokens=3), visuals=lambda doc=doc: visuals_of(doc))
            for i, doc in enumerate(docs)]


def run(server, workers: int, batch_size: int, policy="always", docs=None, caches=None):
    samples = samples_of(docs if docs is not None else documents())
    batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    with EdgePool(workers) as edge:
        results = list(run_batches(server, batches, method=Method(Policy(policy), Codec.parse("png")),
                                   caches=caches or RunCaches(), edge=edge,
                                   ahead=max(1, -(-workers // batch_size))))
    return [(samples.index(r.sample), r) for r in results]


def same_results(a, b):
    """The same samples in the same order, the same failures, outcomes equal but for seconds."""
    assert [i for i, _ in a] == [i for i, _ in b]
    for (i, x), (_, y) in zip(a, b):
        assert str(x.error) == str(y.error), i
        if x.outcome is not None:
            assert_same({k: v for k, v in vars(x.outcome).items() if k != "seconds"},
                        {k: v for k, v in vars(y.outcome).items() if k != "seconds"}, f"sample {i}")


@pytest.fixture(scope="module")
def llava(tiny_server):
    return tiny_server("llava")


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_records_are_the_same_whatever_the_number_of_edge_threads(llava, batch_size):
    inline = run(llava, 0, batch_size)
    one, four = run(llava, 1, batch_size), run(llava, 4, batch_size)
    same_results(inline, one)
    same_results(inline, four)
    failed = {i: str(r.error) for i, r in four if r.error is not None}
    assert set(failed) == {2, 6} and "truncated" in failed[2] and "doc_to_visual failed" in failed[6]
    done = {i: r.outcome for i, r in four if r.error is None}
    assert done[0].bytes_original == done[4].bytes_original == len(Codec.parse("png").encode(documents()[0]))
    assert done[4].generic_cached and not done[0].generic_cached  # paid by the first asker, as in line


def test_a_failed_crop_fails_its_sample_alone(llava):
    """A crop that cannot be made (here the server's framing refuses one sample's crops) fails
    that sample, raised on an edge thread; the others are recorded as in a run without the fault."""
    class RefusesCrops:  # the tiny server, whose framing of any part of an image fails while ``refuse`` is set
        refuse = False

        def __init__(self, server):
            self.server = server

        def __getattr__(self, name):
            return getattr(self.server, name)

        def frame(self, region):
            if self.refuse and region[:2] != (0.0, 0.0):
                raise OSError("crop refused")
            return self.server.frame(region)

    server, samples, results = RefusesCrops(llava), samples_of(documents()), {}
    method, caches = Method(Policy("always"), Codec.parse("png")), RunCaches()
    with EdgePool(4) as edge:
        for sample in samples:
            server.refuse = sample is samples[5]
            for r in run_batches(server, [[sample]], method=method, caches=caches, edge=edge):
                results[samples.index(r.sample)] = r
    failed = results[5]
    assert str(failed.error) == "crop refused" and failed.failed_step == "edge_local"
    # It keeps what it sent and computed before the crop failed: its global image, stage 1, the RoI's request.
    out = failed.outcome
    assert out.answer == "" and out.answer_stage1 is not None and out.bytes_local == 0
    assert out.bytes_global > 0 and out.bytes_request > 0 and out.flops["prefill"] > 0
    assert out.bytes_total == out.bytes_global + out.bytes_request
    clean = dict(run(llava, 4, 1))
    same_results([(i, clean[i]) for i in (0, 1, 3, 4, 7)], [(i, results[i]) for i in (0, 1, 3, 4, 7)])


def test_the_server_starts_before_the_originals_size_is_encoded(llava, monkeypatch):
    """A real 1600x1200 original (noise: PNG encodes it slowly), whose PNG encoding (for bytes_original) takes far
    longer than framing the small global image: stage 1 starts while it is still being encoded,
    and the record still carries its exact size."""
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    caches, seen = RunCaches(), []
    answer_batch = llava.answer_batch

    def first_pass_sees(requests, *args, **kwargs):
        seen.append([task.done() for task in caches.original_sizes.values()])
        return answer_batch(requests, *args, **kwargs)

    monkeypatch.setattr(llava, "answer_batch", first_pass_sees)
    started = time.perf_counter()
    ((_, result),) = run(llava, 2, 1, policy="never", docs=[big], caches=caches)
    took = time.perf_counter() - started
    assert seen and not any(seen[0]), "stage 1 waited for the original's size"
    assert result.outcome.bytes_original == len(Codec.parse("png").encode(sanitize(big))), took


def test_a_batchs_stage_2_follows_the_next_batchs_stage_1(llava, monkeypatch):
    """The server never waits on a crop it could have had earlier: a batch's stage 2 runs after
    the next batch's stage 1 (its crops are encoded meanwhile), and the results still come in
    the samples' order, each as it is alone."""
    docs = [d for d in documents() if isinstance(d, Image.Image)][:4]
    method, caches = Method(Policy("always"), Codec.parse("png")), RunCaches()
    alone = [(i, r) for i, sample in enumerate(samples_of(docs))
             for r in run_batches(llava, [[sample]], method=method, caches=caches)]
    passes, answer_batch = [], llava.answer_batch

    def logged(requests, *args, **kwargs):
        images, question = requests[0]
        passes.append((f"stage{len(images)}", QUESTIONS.index(question)))
        return answer_batch(requests, *args, **kwargs)

    monkeypatch.setattr(llava, "answer_batch", logged)
    piped = run(llava, 1, 1, docs=docs)
    assert passes == [("stage1", 0), ("stage1", 1), ("stage2", 0), ("stage1", 2), ("stage2", 1),
                      ("stage1", 3), ("stage2", 2), ("stage2", 3)]
    same_results(alone, piped)


@pytest.mark.slow
def test_lmms_eval_records_are_the_same_with_four_edge_threads_as_with_one(tiny_llava_path, tmp_path):
    """Through lmms-eval's command line, batched (--batch_size 3 over 8 POPE documents, so a
    short last batch), policy=always: edge_workers=4 writes the records edge_workers=1 writes,
    in the same order, but for seconds; the journal's finish event holds the wall time."""
    from collab_eval.run_session import RunFinished, read_journal
    from tests.helpers import Spec, evaluate_many
    outs = {workers: tmp_path / f"workers{workers}" for workers in (1, 4)}
    runs = dict(zip(outs, evaluate_many([  # both runs in one lmms-eval process (lmms-eval --config)
        Spec("collab_llava", f"pretrained={tiny_llava_path},policy=always,edge_workers={workers},"
                             f"records_dir={out / 'records'}", "collab_pope_mini", out,
             options=("--limit", "8", "--batch_size", "3")) for workers, out in outs.items()])))
    for out in outs.values():
        (journal,) = (out / "records").glob("*.run.ndjson")
        (finished,) = [e for e in read_journal(journal) if isinstance(e, RunFinished)]
        assert finished.seconds > 0 and finished.run_now == 8
    one, four = ([{k: v for k, v in r.items() if k not in ("seconds", "run_id")} for r in runs[w].records]
                 for w in (1, 4))
    assert len(one) == 8 and [r["doc_id"] for r in one] == [r["doc_id"] for r in four]
    for a, b in zip(one, four):
        assert_same(a, b, f"doc {a['doc_id']}")
    assert all(r["bytes_original"] > 0 for r in four)


def test_the_edge_threads_leave_the_model_its_cores():
    """By default the edge takes the CPUs the model's torch threads do not (at least 1, at most 4):
    on 2 CPUs with 1 model thread, 1 edge thread; with torch's default (0: a thread per CPU) or
    more model threads than CPUs, 1."""
    cpus = len(os.sched_getaffinity(0))
    assert default_workers(1) == max(1, min(4, cpus - 1))
    assert default_workers(0) == 1
    assert default_workers(cpus + 3) == 1
    if cpus >= 6:
        assert default_workers(1) == 4
