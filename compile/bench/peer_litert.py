"""LiteRT (TensorFlow Lite's interpreter, XNNPACK delegate) as a benchmark peer.

Run by compile/bench/peers.py under `.venv-tflm`'s interpreter (tensorflow-cpu, pinned in
the Makefile); imports numpy, tensorflow and its sibling scripts only:

    python compile/bench/peer_litert.py SPEC.npz WORKDIR THREADS

SPEC.npz is the detector as compile/bench/tflm.py describes it (`spec` and its arrays),
`calibration` (the records our int8 is calibrated on), `expected` (PyTorch's outputs on
`held_out`) and `x`. The network is rebuilt in Keras (tflm_runner.build_keras) and checked
against PyTorch, then converted twice:

- `litert-fp32`: the float flatbuffer;
- `litert-int8`: full-integer post-training quantization (int8 kernels only,
  `TFLITE_BUILTINS_INT8`; float input and output, as ours), calibrated on `calibration`
  clipped at its 99.9th percentile (`peer_serve.clipped`), Mish written as
  `tflm_runner.bounded_mish`; where an op has no int8 kernel the converter's error is
  the row's reason;
- `litert-int8-mixed`: the quantization `make tflm` makes for TFLM (Keras's Mish, EXP and
  LOG left in float, `spec["float_ops"]`, min/max calibration on the records as they
  are). Its output is constant, so it finds no beat: the ADD between the float EXP and
  LOG stays int8 with a range of exp(largest input), as full-integer Keras Mish does.

Each runs in tf.lite.Interpreter with THREADS threads; its default op resolver applies
the XNNPACK delegate (the interpreter logs "Created TensorFlow Lite XNNPACK delegate").
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_serve  # a sibling script, importable once its folder is on the path
import tflm_runner

MODELS = ("litert-fp32", "litert-int8", "litert-int8-mixed")


def convert(model, calibration: np.ndarray | None) -> bytes:
    """The Keras model as a flatbuffer: float, or full-integer int8 (int8 kernels only)
    calibrated on `calibration`."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration is not None:

        def representative():
            for record in calibration:
                yield [record.T[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    return bytes(converter.convert())


def interpreter_call(flatbuffer: bytes, threads: int):
    """x (1, leads, samples) -> (1, frames, classes), through the XNNPACK delegate."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=threads)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    sink = interpreter.get_output_details()[0]["index"]

    def call(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source, np.ascontiguousarray(x.transpose(0, 2, 1)))
        interpreter.invoke()
        return interpreter.get_tensor(sink)  # a copy

    return call


def keras_model(data, int8_mish: bool = False):
    """The Keras copy of the network (Mish as tflm_runner.bounded_mish with `int8_mish`),
    refused when it is not PyTorch's."""
    spec = json.loads(str(data["spec"]))
    model = tflm_runner.build_keras(spec, data, int8_mish)
    expected = data["expected"][:2]
    got = np.stack([model(r.T[None]).numpy()[0] for r in data["held_out"][:2]])
    error = float(np.abs(got - expected).max() / np.abs(expected).max())
    if not error <= tflm_runner.KERAS_TOLERANCE:
        raise SystemExit(f"error: the Keras network differs from PyTorch's by {error:.2e}")
    return model


def main(argv: list[str]) -> int:
    spec_path, workdir, threads = argv[0], Path(argv[1]), int(argv[2])
    data = np.load(spec_path)
    model = keras_model(data)
    calibration = data["calibration"]
    sources = {
        "litert-fp32": lambda: convert(model, None),
        "litert-int8": lambda: convert(keras_model(data, True), peer_serve.clipped(calibration)),
        "litert-int8-mixed": lambda: tflm_runner.to_int8(
            model, json.loads(str(data["spec"])), calibration
        ),
    }

    def builder(name):
        def build():
            flatbuffer = sources[name]()
            (workdir / f"{name}.tflite").write_bytes(flatbuffer)
            return interpreter_call(flatbuffer, threads), len(flatbuffer)

        return build

    asked = peer_serve.wanted(data, MODELS)
    calls, status = peer_serve.build_all({name: builder(name) for name in asked})
    return peer_serve.serve(calls, status, data["x"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
