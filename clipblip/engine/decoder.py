"""One BLIP decoder step through ONNX Runtime, with the KV cache on the host or on the device.

``HostDecoder`` passes numpy arrays. ``DeviceDecoder`` uses IO binding: cross-attention K/V and
the self-attention cache stay as OrtValues where the session runs (GPU memory on CUDA) from one
step to the next; per step only the new token ids go in and the logits come out — or, for greedy
decoding without logits processors (``step_argmax``), only each row's next token id and a finiteness
flag: the argmax runs on the device too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = ["HostDecoder", "DeviceDecoder"]


class HostDecoder:
    """Decoder step on numpy arrays."""

    device_argmax = False  # greedy picks on the host, from the logits

    def __init__(self, step: ort.InferenceSession, cross_kv: ort.InferenceSession, outputs: list[str],
                 layers: int, heads: int, head_dim: int):
        self.step_session, self.cross_session = step, cross_kv
        self.outputs = outputs  # logits, present_key_0, present_value_0, ...
        self.layers, self.heads, self.head_dim = layers, heads, head_dim
        self.past_names = [f"{k}_{i}" for i in range(layers) for k in ("past_key", "past_value")]
        self.cross_names = [f"{k}_{i}" for i in range(layers) for k in ("cross_key", "cross_value")]

    def cross(self, encoder_states: np.ndarray) -> list[Any]:
        """Every layer's cross-attention K/V, once per image or question: (batch, heads, enc, head_dim)."""
        return self.cross_session.run(self.cross_names, {"encoder_hidden_states": encoder_states})

    def empty_cache(self, batch: int) -> list[Any]:
        return [np.zeros((batch, self.heads, 0, self.head_dim), dtype=np.float32)] * (2 * self.layers)

    def step(self, input_ids: np.ndarray, past: list[Any], cross: list[Any]) -> tuple[np.ndarray, list[Any]]:
        feeds = {"input_ids": input_ids, **dict(zip(self.past_names, past)), **dict(zip(self.cross_names, cross))}
        logits, *present = self.step_session.run(self.outputs, feeds)
        return logits, present

    def keep(self, tensors: list[Any], rows: np.ndarray) -> list[Any]:
        """Only the batch rows selected by the boolean mask ``rows``."""
        return [t[rows] for t in tensors]

    def gather(self, tensors: list[Any], rows: np.ndarray) -> list[Any]:
        """The batch rows at the int indices ``rows``, in that order, repeats allowed (beam search)."""
        return [t[rows] for t in tensors]


GATHER_ROWS = Path(__file__).with_name("graphs") / "gather_rows.onnx"  # built by clipblip.export.kernels
ARGMAX_ROWS = Path(__file__).with_name("graphs") / "argmax_rows.onnx"  # likewise


class DeviceDecoder(HostDecoder):
    """Decoder step with IO binding: caches stay on ``device`` ("cuda" or "cpu") between steps; rows are
    dropped or reordered (beam search) there too, by a one-node Gather graph on the step's providers.
    Greedy decoding takes each row's argmax there as well (``step_argmax``, the argmax_rows graph), so
    that only token ids cross to the host; ``device_argmax`` says whether it can (float32 logits)."""

    def __init__(self, *args, device: str = "cuda", **kwargs):
        super().__init__(*args, **kwargs)
        self.device = device
        options, providers = self.step_session.get_session_options(), self.step_session.get_providers()
        self.gather_session = ort.InferenceSession(str(GATHER_ROWS), options, providers=providers)
        types = {o.name: o.type for o in self.step_session.get_outputs()}
        self.argmax_session = (ort.InferenceSession(str(ARGMAX_ROWS), options, providers=providers)
                               if self.outputs and types.get(self.outputs[0]) == "tensor(float)" else None)

    @property
    def device_argmax(self) -> bool:
        """Whether ``step_argmax`` is available: the argmax graph takes float32 logits."""
        return self.argmax_session is not None

    def _to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def cross(self, encoder_states: np.ndarray) -> list[Any]:
        binding = self.cross_session.io_binding()
        binding.bind_cpu_input("encoder_hidden_states", encoder_states)
        for name in self.cross_names:
            binding.bind_output(name, self.device)
        self.cross_session.run_with_iobinding(binding)
        return binding.get_outputs()

    def empty_cache(self, batch: int) -> list[Any]:
        return [self._to_device(a) for a in super().empty_cache(batch)]

    def _run_step(self, input_ids: np.ndarray, past: list[Any], cross: list[Any], logits_on: str) -> list[Any]:
        binding = self.step_session.io_binding()
        binding.bind_cpu_input("input_ids", input_ids)
        for name, value in zip(self.past_names + self.cross_names, past + cross):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self.outputs[0], logits_on)
        for name in self.outputs[1:]:
            binding.bind_output(name, self.device)  # the new cache stays where it is
        self.step_session.run_with_iobinding(binding)
        return binding.get_outputs()

    def step(self, input_ids: np.ndarray, past: list[Any], cross: list[Any]) -> tuple[np.ndarray, list[Any]]:
        logits, *present = self._run_step(input_ids, past, cross, "cpu")  # logits come to the host
        return logits.numpy(), present

    def step_argmax(self, input_ids: np.ndarray, past: list[Any],
                    cross: list[Any]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        """One greedy step with the logits kept on the device: each row's next token (int64 (rows,), its
        first maximum, as ``argmax``), whether the row's logits were all finite (bool (rows,)), and the
        new cache. Only those two small vectors cross to the host."""
        logits, *present = self._run_step(input_ids, past, cross, self.device)
        binding = self.argmax_session.io_binding()
        binding.bind_ortvalue_input("logits", logits)
        binding.bind_output("ids", "cpu")
        binding.bind_output("finite", "cpu")
        self.argmax_session.run_with_iobinding(binding)
        ids, finite = (value.numpy() for value in binding.get_outputs())
        return ids, finite, present

    def keep(self, tensors: list[Any], rows: np.ndarray) -> list[Any]:
        return self.gather(tensors, np.flatnonzero(rows))

    def gather(self, tensors: list[Any], rows: np.ndarray) -> list[Any]:
        # each tensor (batch, heads, seq, head_dim) → (len(rows), heads, seq, head_dim) on the device;
        # only the indices cross from the host
        indices = np.ascontiguousarray(rows, dtype=np.int64)
        out = []
        for tensor in tensors:
            binding = self.gather_session.io_binding()
            binding.bind_ortvalue_input("data", tensor)
            binding.bind_cpu_input("indices", indices)
            binding.bind_output("rows", self.device)
            self.gather_session.run_with_iobinding(binding)
            out.append(binding.get_outputs()[0])
        return out
