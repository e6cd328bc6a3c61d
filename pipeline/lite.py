"""Greedy conversion in numpy, for one-off ``tensevae convert`` calls.

Importing torch takes 1.2 to 1.8 s on 2 CPU cores, most of a one-off conversion's cold
time; converting a few words needs none of it. This module runs the trained TenseCVAE's
inference forward pass (encoder, posterior mean, latent memory, attending and copying
decoder) in numpy from the same model folder, greedily, as ``pipeline.evaluate.convert``
does by default.

Its answers are torch's: the arithmetic is the same in fp32, only the order of sums inside
the matrix products may differ, which moves scores by about 1e-6. A word whose best and
second-best characters came within ``MARGIN`` of each other at some step could go either way
on such a difference; ``convert`` reports those words, and callers decode them again with
torch (tests/test_lite.py holds the two to identical outputs over train.txt's conversions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import modelfile
from .config import ModelConfig
from .errors import ModelLoadError
from .tenses import tense_index
from .vocab import EOS, PAD, SOS, Vocab

MARGIN = 0.01  # nats: a closer call than this is left to torch


class LiteUnsupported(Exception):
    """This model folder needs the torch path (a config option or weight format the numpy
    forward pass does not cover); not a user error."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _cell(gates: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """h and c after one LSTM step from gate pre-activations (B, 4H), in nn.LSTM's order
    (input, forget, cell, output)."""
    i, f, g, o = np.split(gates, 4, axis=1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c), c


@dataclass
class LiteModel:
    config: ModelConfig
    vocab: Vocab
    w: dict[str, np.ndarray]

    @classmethod
    def load(cls, folder: str | Path) -> LiteModel:
        """A model folder written by ``pipeline.artifacts.save``: the same checks as the
        torch loader (format, config, checksum, finite weights), each one ModelLoadError
        line; LiteUnsupported where only the torch path can run it."""
        meta, weights = modelfile.read_folder(folder)
        config, vocab = modelfile.read_config(meta, str(Path(folder) / modelfile.CONFIG_FILE))
        if "digest" not in meta:  # nothing else vouches that the weights fit the config
            raise LiteUnsupported("a model without a checksum is loaded by torch")
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            arrays = load(weights.read_bytes())
        except (SafetensorError, ValueError, TypeError) as e:
            # a dtype numpy lacks (bf16) is for torch to read; damage torch reports too
            raise LiteUnsupported(f"{weights}: {type(e).__name__}") from None
        modelfile.verify(meta, arrays, str(folder))
        for k, v in arrays.items():
            if v.dtype != np.float32:
                raise LiteUnsupported(f"{k} is {v.dtype}, not float32")
            if not np.isfinite(v).all():
                raise ModelLoadError(f"{weights}: {k} holds NaN or infinite values")
        return cls(config, vocab, arrays)

    # -- the forward pass ---------------------------------------------------------------------

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        out = x @ self.w[f"{name}.weight"].T
        bias = self.w.get(f"{name}.bias")
        return out if bias is None else out + bias

    def _lstm(self, x, h, c, suffix: str = "") -> np.ndarray:
        """One direction of the encoder's LSTM (suffix "_reverse" for the backward one) over
        x (B, S, In) from h, c (B, H): its outputs (B, S, H)."""
        w = self.w
        ih, hh = w[f"encoder.weight_ih_l0{suffix}"], w[f"encoder.weight_hh_l0{suffix}"]
        bias = w[f"encoder.bias_ih_l0{suffix}"] + w[f"encoder.bias_hh_l0{suffix}"]
        gates_x = x @ ih.T + bias
        outs = []
        for t in range(x.shape[1]):
            h, c = _cell(gates_x[:, t] + h @ hh.T, c)
            outs.append(h)
        return np.stack(outs, axis=1)

    def encode(self, ids: np.ndarray, lengths: np.ndarray, tenses: np.ndarray):
        """Posterior mean (B, Z) and the encoder's states (B, S, He), zeros past each word."""
        c, B, S = self.config, ids.shape[0], ids.shape[1]
        D, H = (2 if c.bidirectional else 1), c.hidden_size
        init = np.tanh(self._linear(self.w["tenses.weight"][tenses], "enc_init"))
        init = init.reshape(B, 2, D, H)
        x = self.w["chars.weight"][ids]  # (B, S, C)
        rows = np.arange(B)
        outs = [self._lstm(x, init[:, 0, 0], init[:, 1, 0])]
        final = [outs[0][rows, lengths - 1]]
        if D == 2:  # each word read backwards within its own length, padding left at the end
            steps = np.arange(S)[None, :]
            flip = np.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
            back = self._lstm(x[rows[:, None], flip], init[:, 0, 1], init[:, 1, 1], "_reverse")
            final.append(back[rows, lengths - 1])
            outs.append(back[rows[:, None], flip])
        mask = ids != PAD
        memory = np.concatenate(outs, axis=2) * mask[:, :, None]
        return self._linear(np.concatenate(final, axis=1), "to_mu"), memory, mask

    def _read_memory(self, z: np.ndarray) -> np.ndarray:
        keys = self.w["memory_keys"]
        d2 = (z * z).sum(1, keepdims=True) - 2 * z @ keys.T + (keys * keys).sum(1)
        logits = -np.exp(self.w["memory_log_scale"]) * d2
        values = self.w["memory_values"]
        if self.config.latent_memory_read == "hard":
            return values[logits.argmax(-1)]
        return _softmax(logits) @ values

    def _start(self, z: np.ndarray, tenses: np.ndarray):
        """The decoder's (h, c) before its first step and what it reads at every step (z,
        the target tense, z's memory read)."""
        c = self.config
        tense = self.w["tenses.weight"][tenses]
        parts = [z, tense] if c.latent_memory_z else [tense]
        if c.latent_memory:
            parts.append(self._read_memory(z))
        cond = np.concatenate(parts, axis=1)
        init = (
            cond
            if c.decoder_init_tense
            else np.concatenate([p for p in parts if p is not tense], axis=1)
        )
        h, cell = np.split(np.tanh(self._linear(init, "dec_init")), 2, axis=1)
        return h, cell, cond

    def greedy(self, ids, lengths, src_tenses, tgt_tenses) -> tuple[list[list[int]], np.ndarray]:
        """Each word's characters up to its end token, from the posterior mean, and its
        closest call: the smallest gap between its best and second-best score over the steps
        it wrote."""
        c = self.config
        H, C = c.hidden_size, c.char_embedding
        z, memory, mask = self.encode(ids, lengths, src_tenses)
        h, cell, cond = self._start(z, tgt_tenses)
        B, w = len(ids), self.w
        W = w["decoder.weight_ih_l0"]
        bias = w["decoder.bias_ih_l0"] + w["decoder.bias_hh_l0"]
        fixed = cond @ W[:, C : C + cond.shape[1]].T + bias if c.decoder_input_z else bias
        table = w["chars.weight"] @ W[:, :C].T  # (V, 4H): each character's share of the gates
        if c.attention:
            recurrent = np.concatenate([W[:, W.shape[1] - H :], w["decoder.weight_hh_l0"]], 1).T
            feed = np.zeros((B, H), np.float32)
            comb = w["combine.weight"]
            He = memory.shape[2]
            comb_out, comb_flag = comb[:, :H].T, comb[:, H + He]
            # the source's keys and its share of the combining layer, once (B, S, H) each,
            # as torch's model.source_keys regroups them
            states = memory.reshape(-1, He)
            keys = (states @ w["attn_key.weight"]).reshape(B, -1, H)
            values = (states @ comb[:, H : H + He].T).reshape(B, -1, H)
            position = None
            if c.position_bias:
                K, S = c.position_bias, memory.shape[1]
                offset = np.arange(S)[None, :] - np.arange(c.max_length + 1)[:, None]
                position = w["position_bias"][np.clip(offset, -K, K) + K]
        else:
            recurrent = w["decoder.weight_hh_l0"].T
        tokens = np.full(B, SOS)
        done = np.zeros(B, dtype=bool)
        margins = np.full(B, np.inf)
        out = np.full((B, c.max_length), PAD)
        written = 0
        while written < c.max_length:
            if c.attention:
                gates = np.concatenate([feed, h], axis=1) @ recurrent + fixed + table[tokens]
                h, cell = _cell(gates, cell)
                scores = np.matmul(keys, h[:, :, None])[:, :, 0]
                if position is not None:
                    scores = scores + position[min(written, position.shape[0] - 1)]
                att = _softmax(np.where(mask, scores, -np.inf))
                share = np.matmul(att[:, None, :], values)[:, 0]
                feed = np.tanh(h @ comb_out + share + comb_flag + w["combine.bias"])
                logits = self._linear(feed, "out")
                if c.copy:
                    gate = _sigmoid(self._linear(feed, "copy_gate"))
                    mix = _softmax(logits) * (1 - gate)
                    np.add.at(mix, (np.arange(B)[:, None], ids), att * gate)
                    logits = np.log(np.maximum(mix, 1e-12))
            else:
                gates = h @ recurrent + fixed + table[tokens]
                h, cell = _cell(gates, cell)
                logits = self._linear(h, "out")
            top = np.sort(logits, axis=1)[:, -2:]
            gap = np.where(done, np.inf, top[:, 1] - top[:, 0])
            margins = np.minimum(margins, gap)
            tokens = np.where(done, PAD, logits.argmax(1))
            out[:, written] = tokens
            written += 1
            done |= tokens == EOS
            if done.all():
                break
        return [list(row) for row in out[:, :written]], margins


def encode_words(words: Sequence[str], vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    ids = [vocab.encode(word) for word in words]
    lengths = np.array([len(i) for i in ids])
    padded = np.full((len(ids), max(lengths)), PAD)
    for row, i in enumerate(ids):
        padded[row, : len(i)] = i
    return padded, lengths


def convert(
    model: LiteModel, words: Sequence[str], src: str, tgt: str
) -> tuple[list[str], list[int]]:
    """Each word converted greedily from ``src`` to ``tgt`` by the posterior mean, as
    ``pipeline.evaluate.convert`` does, and the places of the words whose closest call came
    within MARGIN: those must be decoded again by torch."""
    checked = model.vocab.check_all(words, model.config.max_length)
    if not checked:
        return [], []
    ids, lengths = encode_words(checked, model.vocab)
    n = len(checked)
    rows, margins = model.greedy(
        ids, lengths, np.full(n, tense_index(src)), np.full(n, tense_index(tgt))
    )
    outputs = [model.vocab.decode(row) for row in rows]
    return outputs, [i for i in range(n) if margins[i] < MARGIN]
