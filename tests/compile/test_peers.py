"""The benchmark's peers (LiteRT and ExecuTorch, each in its own venv) compute what
PyTorch computes, so `make bench` compares equal work; a peer that cannot run says why in
one line. The peers' venvs are made by `make test` (and `make bench`)."""

import statistics
import time

import numpy as np
import pytest
import torch

import mscnn
from compile.bench import int8 as int8_bench
from compile.bench import peer_serve, peers
from compile.bench.window import time_timers
from compile.errors import CompileError

SAMPLES = 1000  # a 2 s window: the detector's frames (125) and every layer, at a fifth of the cost
# fp32 peers sum in another order (XNNPACK's kernels, TFLite's NHWC layout) than PyTorch:
# the fp32 parity bound of CPU builds (1e-5) is ours; theirs is held to 1e-4 of the largest
# output, ten times looser and still far below the int8 rows' error (~1e-2 and more).
FP32_TOLERANCE = 1e-4


def test_a_peer_without_its_venv_is_refused_with_the_make_target(tmp_path):
    peer = peers.Peer("nowhere", ".venv-nowhere", "peer_litert.py", ("a", "b"), "absent")
    process, status = peers.start_peer(peer, tmp_path / "spec.npz", tmp_path, 1)
    assert process is None
    assert set(status) == {"a", "b"}
    assert all(not s["ok"] and "make bench" in s["error"] for s in status.values())


@pytest.mark.parametrize(
    "ending,expected",
    [
        ("raise MemoryError('converting')", r"stopped \(exit status 1\): MemoryError: converting"),
        ("os.kill(os.getpid(), signal.SIGKILL)", r"stopped \(signal SIGKILL, as the out-of-memory"),
        ("time.sleep(30)", r"gave no answer in 1 s; stopped \(its log: still converting\)"),
    ],
)
def test_a_peer_that_dies_or_hangs_is_refused_saying_how(tmp_path, ending, expected):
    """The child's end in one line: its last error (not a warning's source line, which a
    converter's log ends with), the signal that killed it, or no answer in time."""
    script = tmp_path / "peer.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "print('FutureWarning: deprecated\\n  return cls.__new__(cls)', file=sys.stderr)\n"
        "print('still converting', file=sys.stderr, flush=True)\n" + ending + "\n"
    )
    peer = peers.Peer("fake", ".venv", str(script), ("fake-fp32",), "a peer that fails")
    process = peers.PeerProcess(peer, tmp_path / "spec.npz", tmp_path, 1)
    with pytest.raises(CompileError, match=expected):
        process._read(1 if "sleep" in ending else 60)
    assert process.proc.poll() is not None  # stopped, not left running


def test_a_peer_holding_too_much_memory_is_stopped_saying_so(tmp_path, monkeypatch):
    """A child past its share of the machine's memory is killed by us, with a message
    naming what it held, before the kernel's out-of-memory killer picks a process."""
    limit = 200 * 2**20
    monkeypatch.setattr(peers, "MEMORY_SHARE", limit / (peers.memory_limit() / peers.MEMORY_SHARE))
    script = tmp_path / "peer.py"
    script.write_text(
        "import sys, time\n"
        "print('converting', file=sys.stderr, flush=True)\n"
        "held = bytearray(b'x' * (400 * 2**20))\n"
        "time.sleep(60)\n"
    )
    peer = peers.Peer("fake", ".venv", str(script), ("fake-fp32",), "a peer that grows")
    process = peers.PeerProcess(peer, tmp_path / "spec.npz", tmp_path, 1)
    with pytest.raises(
        CompileError,
        match=r"peer fake held 0\.\d GiB, more than 0\.2 GiB \(.*\(its log: converting\)",
    ):
        process._read(50)
    assert process.proc.poll() is not None  # stopped, not left running
    assert peers.resident_bytes(process.proc.pid) == 0


def test_a_model_the_peer_refuses_is_one_line_of_its_own_error():
    def refuses():
        raise RuntimeError("Weight and Input should both be quantized\n  at op_conv2d.py:126")

    calls, status = peer_serve.build_all({"ok": lambda: (abs, 7), "refused": refuses})
    assert list(calls) == ["ok"] and status["ok"] == {"ok": True, "bytes": 7}
    assert status["refused"] == {
        "ok": False,
        "error": "RuntimeError: Weight and Input should both be quantized",
    }


def test_timers_alternate_in_rounds():
    order = []

    def timer(name):
        def run(n):
            order.append((name, n))
            return [1.0] * n

        return run

    samples = time_timers({"a": timer("a"), "b": timer("b")}, rounds=3, runs=4, pause=0)
    assert [name for name, n in order[2:]] == ["a", "b"] * 3  # after each one's warm-up
    assert {name: len(v) for name, v in samples.items()} == {"a": 12, "b": 12}


def test_timers_report_their_rounds_and_pair_them():
    """Each runtime's samples round by round; the paired ratio takes the rounds' ratios,
    so a slow spell that falls on one runtime's round only moves it less than it moves
    the ratio of the medians."""
    from compile.bench.window import paired_ratio

    times = {  # the warm-up's two calls, then three rounds of one
        "a": iter([[1.0, 1.0], [9.0], [18.0], [18.0]]),
        "b": iter([[2.0, 2.0], [10.0], [10.0], [20.0]]),
    }
    by_round = {}
    samples = time_timers(
        {name: (lambda n, name=name: next(times[name])) for name in times},
        rounds=3,
        runs=1,
        pause=0,
        by_round=by_round,
    )
    assert by_round == {"a": [[9.0], [18.0], [18.0]], "b": [[10.0], [10.0], [20.0]]}
    assert samples == {"a": [9.0, 18.0, 18.0], "b": [10.0, 10.0, 20.0]}
    assert paired_ratio(by_round["a"], by_round["b"]) == pytest.approx(0.9)
    assert statistics.median(samples["a"]) / statistics.median(samples["b"]) == 1.8


def test_unknown_peer_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        int8_bench.main(["--peers", "litert,tflite"])
    assert exit_.value.code == 2
    assert "unknown peer 'tflite'; choose from: litert, executorch" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("peer", "models"),
    [
        ("litert", ("litert-fp32", "litert-int8")),
        ("executorch", ("executorch-fp32", "executorch-int8")),
    ],
)
def test_peers_compute_what_pytorch_computes(tmp_path, peer, models):
    """Each peer, on the detector at SAMPLES: fp32 within FP32_TOLERANCE of PyTorch on
    held-out records; each one's int8 runs them too; the child times calls on request."""
    venv = peers.PEERS[peer]
    if not venv.python.is_file():
        pytest.skip(
            f"no {venv.venv}: `make bench` makes it on first use (ExecuTorch's is 1.5 GB and "
            "5 minutes to install, more than the test budget allows, so `make test` does not)"
        )
    model = mscnn.load_model("cpsc2019_qrs").model.eval()
    held = peers.detector_inputs(SAMPLES)[1][:3]
    x = held[:1, 0][:, None]  # the lead axis as numpy slices it: stride 0, which
    assert 0 in torch.from_numpy(x).stride()  # ExecuTorch refuses unless we copy
    start = time.perf_counter()
    processes, status = peers.start_detector_peers(
        model, x, tmp_path, 1, (peer,), SAMPLES, models=models
    )
    try:
        assert set(status) == set(models), status
        assert all(s["ok"] for s in status.values()), status
        with torch.no_grad():
            expected = model(torch.from_numpy(np.ascontiguousarray(held))).numpy()
        _, runs = peers.model_calls(processes)
        scale = np.abs(expected).max()
        got = runs[f"{peer}-fp32"](held)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() / scale <= FP32_TOLERANCE, peer
        if f"{peer}-int8" in models:
            int8 = runs[f"{peer}-int8"](held)
            assert int8.shape == expected.shape and np.isfinite(int8).all()
            assert not np.array_equal(int8, got)  # really quantized
        ms = processes[peer].timer(f"{peer}-fp32")(3)
        assert len(ms) == 3 and all(t > 0 for t in ms)
    finally:
        peers.close_all(processes)
    print(f"{peer} started and checked in {time.perf_counter() - start:.0f} s")


def test_a_peer_that_dies_before_it_is_ready_is_refused_with_its_last_words(tmp_path):
    peer = peers.Peer("broken", ".venv", "no_such_peer.py", ("m",), "a script that is not there")
    process, status = peers.start_peer(peer, tmp_path / "spec.npz", tmp_path, 1)
    assert status == {}
    process, status = peers.ready(process)
    assert process is None and not status["m"]["ok"]
    assert status["m"]["error"].startswith("peer broken stopped (exit status 2):")
    assert "no_such_peer.py" in status["m"]["error"]  # the interpreter's own complaint


def test_litert_refuses_a_model_the_keras_rebuild_does_not_map_in_one_line(tmp_path):
    backbone = mscnn.load_model("cpsc2019").model.eval()
    x = np.zeros((1, 1, 256), np.float32)
    specs, status = peers.window_spec(backbone, x, tmp_path, ("litert",))
    assert specs == {}
    assert status["litert-fp32"]["error"].startswith("not mapped: tflm: the side-by-side takes")
    detector = mscnn.load_model("cpsc2019_qrs").model.eval()
    specs, status = peers.window_spec(detector, np.zeros((8, 1, 256), np.float32), tmp_path,
                                      ("litert",))  # fmt: skip
    assert specs == {} and "batch 1, not 8" in status["litert-fp32"]["error"]


def test_executorch_int8_takes_batch_norms_as_depthwise_convs_computing_the_same():
    """XNNPACK cannot lower a quantized input into a batch norm's float weights: the peer
    rewrites each (here after a ReLU, as the detector's) as a depthwise 1x1 conv."""
    from compile.bench import peer_executorch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.ReLU(), torch.nn.BatchNorm1d(4))
    with torch.no_grad():
        net[2].running_mean.uniform_(-1, 1), net[2].running_var.uniform_(0.5, 2)
        net[2].weight.uniform_(-2, 2), net[2].bias.uniform_(-1, 1)
    x = torch.randn(1, 1, 64)
    module = torch.export.export(net.eval(), (x,)).module()
    expected = module(x)
    rewritten = peer_executorch.batch_norms_as_convs(module)
    targets = [n.target for n in rewritten.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.batch_norm.default not in targets
    assert targets.count(torch.ops.aten.conv1d.default) == 2
    assert torch.allclose(rewritten(x), expected, atol=1e-6)


def test_peers_calibrate_on_records_clipped_at_the_percentile_ours_takes():
    """An artefact (33 mV among 1 mV beats) sets no peer's input range: it is clipped at
    the 99.9th percentile of the magnitudes, as our calibration clips every tensor; the
    ordinary samples are kept as they are."""
    rng = np.random.default_rng(0)
    records = rng.normal(0, 0.5, (4, 1, 5000)).astype(np.float32)
    records[1, 0, 100:110] = 33.0  # 0.05% of the samples
    got = peer_serve.clipped(records)
    bound = np.percentile(np.abs(records), peer_serve.CALIBRATION_PERCENTILE)
    assert 1.0 < bound < 3.0 and np.abs(got).max() == np.float32(bound)
    ordinary = np.abs(records) <= bound
    assert ordinary.mean() >= 0.999 and np.array_equal(got[ordinary], records[ordinary])
