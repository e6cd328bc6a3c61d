"""TenseCVAE: a character-level conditional VAE over verb forms."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from . import products
from .config import ModelConfig
from .vocab import PAD, Vocab


@dataclass
class Posterior:
    mu: torch.Tensor  # (B, Z)
    logvar: torch.Tensor  # (B, Z)
    memory: torch.Tensor  # (B, S, He) encoder states, for attention
    mask: torch.Tensor  # (B, S) True where a source character stands
    src: torch.Tensor | None = None  # (B, S) the source's character ids, for copying


@dataclass
class DecoderState:
    """What decode_step carries between steps; decoding code treats it as opaque except
    for ``select``, which reorders it for beam search."""

    h: torch.Tensor  # (L=1, B, H)
    c: torch.Tensor  # (1, B, H)
    cond: torch.Tensor  # (B, Z + E) z joined with the target tense, fed at each step
    memory: torch.Tensor | None  # (B, S, He)
    mask: torch.Tensor | None  # (B, S)
    use_context: torch.Tensor | None  # (B, 1) 1 where the decoder may attend
    feed: torch.Tensor | None = None  # (B, H) last attentional output, fed to the next step
    pre: torch.Tensor | None = None  # (B, 4H) the gates' share from z, tense and biases
    cell: CellWeights | None = None  # the same for every row, so select leaves it alone
    src: torch.Tensor | None = None  # (B, S) source ids where the model copies
    # (T, S) the attention's position bias at each step, the same for every row; and the
    # step decode_step takes next
    position: torch.Tensor | None = None
    step: int = 0
    # False where no row has a source to attend to (decoding from noise): steps then skip
    # the attention, whose context every row would multiply by 0
    attends: bool = True
    # (B, S, H) each: the source's keys and its share of the combining layer, multiplied
    # once per decode out of training (``TenseCVAE.source_keys``), or None
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> DecoderState:
        def pick(t, dim=0):
            return None if t is None else t.index_select(dim, index)

        return DecoderState(
            pick(self.h, 1),
            pick(self.c, 1),
            pick(self.cond),
            pick(self.memory),
            pick(self.mask),
            pick(self.use_context),
            pick(self.feed),
            pick(self.pre),
            self.cell,
            pick(self.src),
            self.position,
            self.step,
            self.attends,
            pick(self.keys),
            pick(self.values),
        )

    def reorder(self, index: torch.Tensor) -> DecoderState:
        """``select`` for an index that only moves rows among copies of one word (beam
        search's parents): what is fixed per word (z, source, mask) stays where it is."""
        return replace(
            self,
            h=self.h.index_select(1, index),
            c=self.c.index_select(1, index),
            feed=None if self.feed is None else self.feed.index_select(0, index),
        )


@dataclass
class CellWeights:
    """The attending decoder's LSTM weights, cut once per decode into the pieces each step
    needs: its input's character part (and, out of training, that part already applied to
    every character, a lookup table) and one matrix for the fed-back output and h together."""

    chars: torch.Tensor  # (4H, C)
    table: torch.Tensor | None  # (V, 4H) chars' embeddings times their weights
    recurrent: torch.Tensor | None  # (4H, H + H) for [feed, h]
    # the same matrix quantized to int8 and packed, in a copy made by pipeline.precision.int8
    recurrent_int8: object | None = None


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device=None) -> torch.Tensor:
    """A bool mask that keeps each entry with probability 1 - p (p rounded to 1/32768).
    Each entry takes 15 random bits: one 64-bit draw of the generator serves four entries
    (its top bit is always 0, and each 16-bit quarter drops its own top bit). Drawing a
    float per entry, as torch.rand does, cost 9% of a training step on 2 CPU cores; this
    costs about a quarter of that."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()
    quarters = bits.view(torch.int16)[:n].view(shape)
    return quarters.bitwise_and_(0x7FFF) >= round(p * 32768)


class Dropout(nn.Module):
    """nn.Dropout's function, its mask drawn by keep_mask (about 3.5 times as fast on CPU
    as torch.rand_like, and 4 times as fast as nn.Dropout's bernoulli_)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = keep_mask(x.shape, self.p, x.device)
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _keep(t: torch.Tensor, a: int, n_on: int, n_off: int) -> torch.Tensor:
    """Rows of a step's batch that still write: the first n_on of its a attending rows and
    the first n_off of the rows after them."""
    if n_off == 0 or n_on == a:
        return t[: n_on + n_off]
    return torch.cat([t[:n_on], t[a : a + n_off]])


def _by_sigmoid(x: torch.Tensor) -> bool:
    """Whether tanh of ``x`` is taken as 2 sigmoid(2x) - 1: out of training, on the CPU, in
    fp32. Not in bf16, whose sigmoid near 1/2 keeps about 0.004 absolute, which the route
    would pass on to tanh's small values, that bf16 holds to 0.4% of themselves."""
    return not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32


def tanh(x: torch.Tensor) -> torch.Tensor:
    """torch.tanh, but out of training on the CPU in fp32 as 2 sigmoid(2x) - 1: the same
    function (within 2e-7), and there about twice as fast, as torch's CPU tanh is several
    times slower than its sigmoid (over 512 x 256 values on 2 threads, 293 against 81 µs on
    an AMD EPYC with AVX2, 2026-12-07; 173 against 35 on one with AVX-512). Training keeps
    torch.tanh, whose backward needs no more than its output."""
    if not _by_sigmoid(x):
        return torch.tanh(x)
    return torch.sigmoid(x * 2).mul_(2).sub_(1)


def lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h and c after one LSTM step from its gate pre-activations (B, 4H), in nn.LSTM's
    order (input, forget, cell, output). Out of training on the CPU in fp32, ``gates`` is
    overwritten: one sigmoid over all four gates, the cell's gate doubled first, gives its
    tanh as 2 sigmoid(2g) - 1 (``tanh``)."""
    if not _by_sigmoid(gates):
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    H = gates.size(1) // 4
    gates[:, 2 * H : 3 * H].mul_(2)
    i, f, g, o = gates.sigmoid_().chunk(4, dim=1)
    c = f * c + i * g.mul_(2).sub_(1)
    return o * tanh(c), c


def _keyed_attention(query, keys, values, mask, position=None, broadcast=False):
    """The attention's share of the combining layer (B, H) and its weights over the source
    (B, S), from one query (B, H) and the source's keys and values (B, S, H each,
    ``TenseCVAE.source_keys``). ``broadcast`` (in training): broadcast products, whose
    backward is about three times faster on CPU than batched matrix products' with one
    query per row; without gradients, batched matrix products, which need no (B, S, H)
    intermediate."""
    if broadcast:
        scores = (keys * query.unsqueeze(1)).sum(-1)
    else:  # (B, 1, H) @ (B, H, S): as (B, S, H) @ (B, H, 1) it took 9 times as long
        scores = torch.bmm(query.unsqueeze(1), keys.transpose(1, 2)).squeeze(1)
    if position is not None:  # (S,): this step's bias by place in the source
        scores = scores + position
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    if broadcast:
        share = (weights.unsqueeze(2) * values).sum(1)
    else:
        share = torch.bmm(weights.unsqueeze(1), values).squeeze(1)
    return share, weights


class _WeightGrad(torch.autograd.Function):
    """The identity on ``x``, a step-packed term (sum of steps' rows, N) added to every
    step's product by ``weight``, which the steps make with the weight detached. Its
    backward receives the gradient of all steps' rows at once and gives the weight's
    gradient as one product with ``inputs``, the steps' detached inputs (sum of rows, K)
    in the same order, filled in by the forward pass after this call."""

    @staticmethod
    def forward(ctx, x, weight, inputs):
        ctx.inputs, ctx.weight = inputs, weight.detach()
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        weight_grad = None
        if ctx.needs_input_grad[1]:
            weight_grad = products.weight_grad(grad, torch.cat(ctx.inputs), ctx.weight)
        return grad, weight_grad, None


class TenseCVAE(nn.Module):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__()
        self.config, self.vocab = config, vocab
        c = config
        H, Z, E = c.hidden_size, c.latent_size, c.tense_embedding
        directions = 2 if c.bidirectional else 1
        enc_out = H * directions
        self.chars = nn.Embedding(vocab.size, c.char_embedding, padding_idx=PAD)
        self.tenses = nn.Embedding(4, E)
        # The source tense sets the encoder's initial state (the lab joins it to h0).
        self.enc_init = nn.Linear(E, 2 * H * directions)
        self.encoder = nn.LSTM(c.char_embedding, H, batch_first=True, bidirectional=c.bidirectional)
        self.to_mu = nn.Linear(enc_out, Z)
        self.to_logvar = nn.Linear(enc_out, Z)
        cond = (Z if c.latent_memory_z else 0) + E
        if c.latent_memory:
            M, D = c.latent_memory, c.latent_memory_size
            self.memory_keys = nn.Parameter(torch.randn(M, Z))
            self.memory_values = nn.Parameter(torch.randn(M, D) * 0.1)
            self.memory_log_scale = nn.Parameter(torch.tensor(float(c.latent_memory_log_scale)))
            if c.latent_memory_ema > 0:
                # how many z each slot has had lately, and their sum, both moving averages
                self.register_buffer("memory_counts", torch.ones(M))
                self.register_buffer("memory_sums", self.memory_keys.detach().clone())
            cond += D
        # The decoder starts from z joined with the target tense (and z's memory read), or
        # from z alone (decoder_init_tense false: the tense then enters at every step).
        self.dec_init = nn.Linear(cond - (0 if c.decoder_init_tense else E), 2 * H)
        # With attention the decoder is fed its previous attentional output (input feeding),
        # so it knows where in the source it has read up to.
        dec_in = c.char_embedding + (cond if c.decoder_input_z else 0) + (H if c.attention else 0)
        self.decoder = nn.LSTM(dec_in, H, batch_first=True)
        if c.attention:
            self.attn_key = nn.Linear(H, enc_out, bias=False)
            self.combine = nn.Linear(H + enc_out + 1, H)
            if c.copy:
                self.copy_gate = nn.Linear(H, 1)
            if c.position_bias:
                # zeros: no draw from the random stream, and training starts from content alone
                self.position_bias = nn.Parameter(torch.zeros(2 * c.position_bias + 1))
        self.out = nn.Linear(H, vocab.size)
        self.drop = Dropout(c.dropout)
        # Set by pipeline.precision.int8 on its copy: the attending decoder's recurrent
        # matrix packed for int8 products.
        self.recurrent_int8 = None

    @property
    def device(self) -> torch.device:
        return self.out.weight.device

    def encode(
        self, src: torch.Tensor, src_len: torch.Tensor, src_tense: torch.Tensor
    ) -> Posterior:
        B = src.size(0)
        directions = 2 if self.config.bidirectional else 1
        init = torch.tanh(self.enc_init(self.tenses(src_tense)))  # (B, 2*H*D)
        h0, c0 = init.view(B, 2, directions, -1).permute(1, 2, 0, 3).contiguous()  # (D, B, H)
        x = self.drop(self.chars(src))
        mask = src != PAD
        if type(self.encoder) is not nn.LSTM:  # int8's quantized LSTM (pipeline.precision)
            packed = nn.utils.rnn.pack_padded_sequence(
                x, src_len.cpu(), batch_first=True, enforce_sorted=False
            )
            out, (h, _) = self.encoder(packed, (h0, c0))
            memory, _ = nn.utils.rnn.pad_packed_sequence(
                out, batch_first=True, total_length=src.size(1)
            )
            final = h.transpose(0, 1).reshape(B, -1)  # (B, H*D)
            return Posterior(self.to_mu(final), self.to_logvar(final), memory, mask, src)
        # Each direction runs over the padded batch whole, which on CPU is about a third
        # faster than a packed sequence. The backward direction reads every word reversed
        # within its own length (padding stays at the end), so it starts at the word's last
        # character; its outputs are put back in place by the same reversal.
        S, H = src.size(1), self.config.hidden_size
        lengths = src_len.to(src.device).unsqueeze(1)  # (B, 1)
        last = (lengths - 1).view(B, 1, 1).expand(B, 1, H)
        outs = [self._encoder_direction(x, h0[:1], c0[:1], "")]
        if directions == 2:
            steps = torch.arange(S, device=src.device).unsqueeze(0)
            flip = torch.where(steps < lengths, lengths - 1 - steps, steps).unsqueeze(2)
            reversed_out = self._encoder_direction(
                x.gather(1, flip.expand_as(x)), h0[1:], c0[1:], "_reverse"
            )
            final = torch.cat([outs[0].gather(1, last), reversed_out.gather(1, last)], dim=2)
            outs.append(reversed_out.gather(1, flip.expand_as(reversed_out)))
        else:
            final = outs[0].gather(1, last)
        final = final.squeeze(1)  # (B, H*D): each direction's state after the whole word
        memory = self.drop(torch.cat(outs, dim=2) * mask.unsqueeze(2))  # zeros past the end
        return Posterior(self.to_mu(final), self.to_logvar(final), memory, mask, src)

    def _encoder_direction(self, x, h0, c0, suffix: str) -> torch.Tensor:
        """One direction of the encoder's LSTM (its parameters by nn.LSTM's names, suffix
        "_reverse" for the backward one) over x (B, S, C) from h0, c0 (1, B, H)."""
        e = self.encoder
        params = [
            getattr(e, f"{n}_l0{suffix}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        out, _, _ = torch.ops.aten.lstm.input(
            x, [h0, c0], params, True, 1, 0.0, self.training, False, True
        )
        return out

    @staticmethod
    def reparameterize(mu, logvar, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(mu.shape, generator=generator, device="cpu").to(mu.device, mu.dtype)
        return mu + noise * torch.exp(0.5 * logvar)

    def init_decoder(
        self,
        z: torch.Tensor,
        tgt_tense: torch.Tensor,
        posterior: Posterior | None = None,
        use_context: torch.Tensor | None = None,
    ) -> DecoderState:
        """The decoder's state before its first step. Without a posterior (generation from
        noise) or where use_context is 0, the decoder sees z and the tense alone."""
        tense = self.tenses(tgt_tense)
        parts = [z, tense] if self.config.latent_memory_z else [tense]
        if self.config.latent_memory:
            parts.append(self.read_memory(z))
        cond = torch.cat(parts, dim=-1)  # (B, Z+E[+D])
        init = cond
        if not self.config.decoder_init_tense:  # one start for all four tenses of a z
            init = torch.cat([part for part in parts if part is not tense], dim=-1)
        h0, c0 = torch.tanh(self.dec_init(init)).chunk(2, dim=-1)
        memory = mask = flag = feed = src = None
        if self.config.attention:
            feed = z.new_zeros(z.size(0), self.config.hidden_size)
            B = z.size(0)
            if posterior is None:
                memory = z.new_zeros(B, 1, self.attn_key.out_features)
                mask = torch.ones(B, 1, dtype=torch.bool, device=z.device)
                flag = z.new_zeros(B, 1)
                src = torch.full((B, 1), PAD, dtype=torch.long, device=z.device)
            else:
                memory, mask, src = posterior.memory, posterior.mask, posterior.src
                flag = (
                    z.new_ones(B, 1) if use_context is None else use_context.to(z.dtype).view(B, 1)
                )
        pre = cell = position = keys = values = None
        if self.config.attention:
            pre, cell = self._cell_weights(cond)
            if self.config.position_bias:
                position = self.position_scores(self.config.max_length + 1, memory.size(1))
            # Out of training, every step's products with the source are regrouped as
            # training's are: one product per word here, then each step scores H-wide keys.
            # An int8 copy, whose projections are quantized modules, steps as written.
            if (
                posterior is not None
                and not torch.is_grad_enabled()
                and type(self.attn_key) is nn.Linear
                and type(self.combine) is nn.Linear
            ):
                # contiguous: each step's batched products would otherwise copy the
                # split's strided halves (in bf16; fp32's kernels read them in place)
                keys, values = (t.contiguous() for t in self.source_keys(memory))
        return DecoderState(
            h0.unsqueeze(0).contiguous(),
            c0.unsqueeze(0).contiguous(),
            cond,
            memory,
            mask,
            flag,
            feed,
            pre,
            cell,
            src if self.config.copy else None,
            position,
            attends=posterior is not None,
            keys=keys,
            values=values,
        )

    def source_keys(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, H) each, for the source's states ``memory`` (B, S, He): their keys (the
        attention scores a decoder output q as keys @ q, since attn_key(q) . m = q .
        (attn_key.weight^T m)) and their share of the combining layer (the attention's
        weights times these give the context's share, with no (B, He) context between)."""
        H, He = self.config.hidden_size, memory.size(2)
        w = torch.cat([self.attn_key.weight, self.combine.weight[:, H : H + He].t()], dim=1)
        if products.serves(memory):
            B, S = memory.shape[:2]
            keys = products.linear(memory.reshape(B * S, He), w.t()).view(B, S, 2 * H)
        else:
            keys = torch.matmul(memory, w)
        keys, values = keys.split([H, H], dim=-1)
        return keys, values

    def position_scores(self, steps: int, length: int) -> torch.Tensor:
        """(steps, length): the learned bias of source character j at decoder step t, by
        their offset j - t; offsets beyond the table's reach share its end values."""
        K = self.config.position_bias
        device = self.position_bias.device
        offset = torch.arange(length, device=device) - torch.arange(steps, device=device)[:, None]
        return self.position_bias[offset.clamp(-K, K) + K]

    def read_memory(self, z: torch.Tensor) -> torch.Tensor:
        """The memory's values (B, D) weighted by softmax(-scale * |z - key|^2); a hard read
        takes the value of the heaviest slot alone (in training, with the soft read's
        gradient)."""
        keys = self.memory_keys
        ema = self.config.latent_memory_ema > 0
        if ema:  # a copy: the keys move in place below, after this read's products
            keys = keys.detach().clone()
        d2 = (z * z).sum(1, keepdim=True) - 2 * z @ keys.t() + (keys * keys).sum(1)
        if ema and self.training and torch.is_grad_enabled():
            self._move_keys(z.detach(), d2.detach())
        logits = -self.memory_log_scale.exp() * d2
        if self.config.latent_memory_read == "hard":
            slot = logits.argmax(-1)
            if not torch.is_grad_enabled():
                return self.memory_values[slot]
            weights = torch.softmax(logits, dim=-1)
            hard = F.one_hot(slot, weights.size(-1)).to(weights.dtype)
            weights = hard + weights - weights.detach()
            return weights @ self.memory_values
        return torch.softmax(logits, dim=-1) @ self.memory_values

    @torch.no_grad()
    def _move_keys(self, z: torch.Tensor, d2: torch.Tensor) -> None:
        """One step of the keys' moving averages over the z (B, Z) read in training, then
        restarts: each slot whose count fell below 1% of the mean takes one of the z that
        sit farthest from their nearest key (and that key's value, to start from)."""
        g = self.config.latent_memory_ema
        slot = d2.argmin(1)
        M = self.memory_keys.size(0)
        counts = torch.bincount(slot, minlength=M).to(z.dtype)
        sums = torch.zeros_like(self.memory_sums).index_add_(0, slot, z)
        self.memory_counts.mul_(g).add_(counts, alpha=1 - g)
        self.memory_sums.mul_(g).add_(sums, alpha=1 - g)
        live = self.memory_counts > 1e-6
        self.memory_keys[live] = self.memory_sums[live] / self.memory_counts[live].unsqueeze(1)
        mean = self.memory_counts.mean()
        dead = (self.memory_counts < 0.01 * mean).nonzero().squeeze(1)
        if len(dead) == 0:
            return
        far = d2.gather(1, slot.unsqueeze(1)).squeeze(1).argsort(descending=True)
        n = min(len(dead), len(far) // 4)
        dead, far = dead[:n], far[:n]
        self.memory_keys[dead] = z[far]
        self.memory_values[dead] = self.memory_values[slot[far]]
        self.memory_counts[dead] = mean
        self.memory_sums[dead] = z[far] * mean

    def _cell_weights(self, cond: torch.Tensor) -> tuple[torch.Tensor, CellWeights]:
        """The attending decoder runs its LSTM step by hand from nn.LSTM's own parameters:
        the input's parts that stay fixed over a word (z, tense, biases) are multiplied once
        here, not at every step, and per-step work is one matrix product."""
        d, C = self.decoder, self.config.char_embedding
        w = d.weight_ih_l0  # columns: characters, then [z, tense] if fed, then feed
        bias = d.bias_ih_l0 + d.bias_hh_l0
        Zc = cond.size(1) if self.config.decoder_input_z else 0
        pre = F.linear(cond, w[:, C : C + Zc], bias) if Zc else bias.expand(cond.size(0), -1)
        table = None
        if not (self.training and self.drop.p > 0):  # dropout needs the embeddings themselves
            table = F.linear(self.chars.weight, w[:, :C])
        if self.recurrent_int8 is not None:
            return pre, CellWeights(w[:, :C], table, None, self.recurrent_int8)
        return pre, CellWeights(w[:, :C], table, self.recurrent_weight())

    def recurrent_weight(self) -> torch.Tensor:
        """(4H, H + H): the attending decoder's weights for [fed-back output, h], the last H
        columns of its input weights (after the characters and [z, tense]) joined to h's."""
        d, H = self.decoder, self.config.hidden_size
        w = d.weight_ih_l0
        return torch.cat([w[:, w.size(1) - H :], d.weight_hh_l0], dim=1)

    def _inputs(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.chars(tokens))  # (B, T, C)
        if self.config.decoder_input_z:
            x = torch.cat([x, cond.unsqueeze(1).expand(-1, x.size(1), -1)], dim=-1)
        return x

    def _attend(
        self, out: torch.Tensor, state: DecoderState, position: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attentional output (B, H) for one decoder output (B, H), and the attention's
        weights over the source (B, S); the context is zeroed, and flagged so, where the
        decoder may not attend. In training, broadcast products: with one query per row the
        batched matrix products' backward is made of outer products, about three times slower
        on CPU. Without gradients, batched matrix products: they need no (B, S, E)
        intermediate."""
        if state.keys is not None and not torch.is_grad_enabled():
            return self._attend_keys(out, state, position)
        memory = state.memory  # the source's states are its keys and values here
        context, weights = _keyed_attention(
            self.attn_key(out), memory, memory, state.mask, position, torch.is_grad_enabled()
        )
        flag = state.use_context  # (B, 1)
        attended = tanh(self.combine(torch.cat([out, context * flag, flag], dim=-1)))
        return attended, weights

    def _attend_keys(
        self, out: torch.Tensor, state: DecoderState, position: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """_attend from the source's keys and values (``source_keys``): the same sums
        regrouped, half as wide at each step, with no key or context product per step."""
        share, weights = _keyed_attention(
            out, state.keys, state.values, state.mask, position, broadcast=False
        )
        H, flag = self.config.hidden_size, state.use_context
        w = self.combine.weight  # columns: output, context, flag
        if products.serves(out):
            mixed = products.linear(out, w[:, :H], self.combine.bias)
        else:
            mixed = torch.addmm(self.combine.bias, out, w[:, :H].t())
        attended = tanh(mixed + flag * (share + w[:, w.size(1) - 1]))
        return attended, weights

    def decode(self, tokens: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) for input tokens (B, T) starting with <s>."""
        if self.config.attention:
            return self._decode_attending(tokens, state)
        out, _ = self.decoder(self._inputs(tokens, state.cond), (state.h, state.c))
        return self.out(self.drop(out))

    def _decode_attending(self, tokens: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Teacher-forced decoding with attention. Input feeding makes each step wait for the
        last, so the steps run one by one; what does not depend on the last step is done once:
        - the characters' share of every step's gates, in one product;
        - the source's keys and its share of the combining layer, one product over the
          memory (decode_step's per-step products, regrouped);
        - the gradients of the two weights every step multiplies by (the recurrent one and
          the combining layer's share from the output), one product each over all steps
          (``_WeightGrad``), not one per step summed;
        - a row that may not attend (use_context 0: context dropout, the prior's draws)
          computes no attention at all, where decode_step would weigh it and multiply by 0.
        Rows are grouped attending first, each group longest first, and a row leaves its
        step's batch when its word ends: each step's rows are two prefixes, one per group,
        gathered from and scattered back to (step, row) by one index."""
        B, T = tokens.shape
        H = self.config.hidden_size
        lengths = (tokens != PAD).sum(1)
        attends = state.use_context.view(B) > 0
        order = torch.argsort(lengths + attends.long() * (T + 1), descending=True, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(B, device=order.device)
        tokens, lengths = tokens.index_select(0, order), lengths.index_select(0, order)
        A = int(attends.sum())
        live = lengths.unsqueeze(0) > torch.arange(T, device=lengths.device).unsqueeze(1)
        on = live[:, :A].sum(1).tolist()  # attending rows still writing at each step
        off = live[:, A:].sum(1).tolist()
        sizes = [a + b for a, b in zip(on, off, strict=True)]
        flat = live.flatten().nonzero().squeeze(1)  # (step, row) of each live row, step-major
        # every step's gate inputs from the characters and what is fixed over a word, for
        # the live (step, row) pairs alone
        x = products.linear(self.drop(self.chars(tokens.t().reshape(-1)[flat])), state.cell.chars)
        x = x + state.pre.index_select(0, order[flat % B])
        recurrent = state.cell.recurrent  # fp32: an int8 copy converts, it does not train
        w = self.combine.weight  # columns: output, context, flag
        He = state.memory.size(2)
        w_out, w_flag = w[:, :H], w[:, H + He]
        inputs, outputs = [], []  # each step's [feed, h] and dropped h, for the deferred grads
        x = _WeightGrad.apply(x, recurrent, inputs).split(sizes)
        bias = self.combine.bias.expand(len(flat), H)
        bias = _WeightGrad.apply(bias, w_out, outputs).split(sizes)
        # the source's keys and its share of the combining layer, for attending rows
        rows = order[:A]
        memory, mask = state.memory.index_select(0, rows), state.mask.index_select(0, rows)
        if state.keys is None or torch.is_grad_enabled():
            keys, values = self.source_keys(memory)  # (A, S, H) each
        else:  # init_decoder multiplied them already (out of training)
            keys, values = state.keys.index_select(0, rows), state.values.index_select(0, rows)
        positions = [None] * T
        if state.position is not None:
            positions = self.position_scores(T, memory.size(1)).unbind(0)
        broadcast = torch.is_grad_enabled()
        h, c, feed = (t.index_select(0, order) for t in (state.h[0], state.c[0], state.feed))
        # the steps' products take no weight gradient (_WeightGrad does): (out, in) and,
        # for the backward, (in, out), contiguous
        recurrent, w_out = recurrent.detach(), w_out.detach()
        recurrent_t = w_out_t = None
        if products.serves(recurrent):
            recurrent, w_out = recurrent.contiguous(), w_out.contiguous()
            if torch.is_grad_enabled():
                recurrent_t, w_out_t = recurrent.t().contiguous(), w_out.t().contiguous()
        weights, feeds = [], []
        a, b = A, B - A
        for x_t, bias_t, n_on, n_off, position in zip(x, bias, on, off, positions, strict=True):
            if (n_on, n_off) != (a, b):  # rows whose word ended leave
                h, c, feed = (_keep(t, a, n_on, n_off) for t in (h, c, feed))
                a, b = n_on, n_off
            inputs.append(torch.cat([feed, h], dim=1))
            h, c = lstm_cell(products.affine(x_t, inputs[-1], recurrent, recurrent_t), c)
            out = self.drop(h)
            outputs.append(out)
            mixed = products.affine(bias_t, out, w_out, w_out_t)
            if a:
                context, att = _keyed_attention(
                    out[:a], keys[:a], values[:a], mask[:a], position, broadcast
                )
                mixed = torch.cat([mixed[:a] + context + w_flag, mixed[a:]])
                weights.append(att)
            feed = tanh(mixed)
            feeds.append(feed)
            # the deferred gradients need the values only, not a second path back
            inputs[-1], outputs[-1] = inputs[-1].detach(), outputs[-1].detach()
        # back to (B, T, ...) in the sorted order; where a word has ended, zeros
        stacked = torch.zeros(T * B, H, device=tokens.device, dtype=feeds[0].dtype)
        stacked = stacked.index_copy(0, flat, torch.cat(feeds)).view(T, B, H).transpose(0, 1)
        copy = None
        if state.src is not None:
            S = memory.size(1)
            copy = stacked.new_zeros(T * A, S)
            if weights:
                attending = live[:, :A].flatten().nonzero().squeeze(1)
                copy = copy.index_copy(0, attending, torch.cat(weights))
            copy = F.pad(copy.view(T, A, S), (0, 0, 0, B - A)).transpose(0, 1)
        sorted_state = replace(
            state,
            use_context=state.use_context.index_select(0, order),
            src=None if state.src is None else state.src.index_select(0, order),
        )
        return self._output(stacked, copy, sorted_state).index_select(0, inverse)

    def decode_step(
        self, tokens: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState]:
        """One step: logits (B, V) for the next character after ``tokens`` (B,)."""
        if not self.config.attention:
            x = self._inputs(tokens.unsqueeze(1), state.cond)  # (B, 1, In)
            out, (h, c) = self.decoder(x, (state.h, state.c))
            return self.out(self.drop(out[:, 0])), replace(state, h=h, c=c)
        cell = state.cell
        if cell.table is None:
            x = F.linear(self.drop(self.chars(tokens)), cell.chars)
        else:
            x = F.embedding(tokens, cell.table)
        position = None
        if state.position is not None:
            position = state.position[min(state.step, state.position.size(0) - 1)]
        h, c, feed, w = self._advance(
            state.pre, x, state.h[0], state.c[0], state.feed, state, position
        )
        return self._output(feed, w, state), replace(
            state, h=h.unsqueeze(0), c=c.unsqueeze(0), feed=feed, step=state.step + 1
        )

    def _advance(self, base, extra, h, c, feed, state: DecoderState, position=None):
        """One attending step from the gates' fixed share ``base`` (z, tense, biases) and
        this step's character's share ``extra``: h, c and the attentional output that is fed
        to the next step."""
        x, cell = torch.cat([feed, h], dim=1), state.cell
        if cell.recurrent_int8 is not None:  # x is quantized to int8 on its range at each step
            gates = torch.ops.quantized.linear_dynamic(x, cell.recurrent_int8, True) + base
        elif not products.serves(x):
            gates = torch.addmm(base, x, cell.recurrent.t())
        elif torch.is_grad_enabled():  # decode_step in training (scheduled sampling)
            gates = base + products.linear(x, cell.recurrent)
        else:
            gates = products.affine(base, x, cell.recurrent, None)
        gates += extra  # in place: no product keeps a copy of its output for backward
        h, c = lstm_cell(gates, c)
        if not state.attends and type(self.combine) is nn.Linear:
            out, H = self.drop(h), self.config.hidden_size
            attended = tanh(F.linear(out, self.combine.weight[:, :H], self.combine.bias))
            return h, c, attended, out.new_zeros(out.size(0), state.memory.size(1))
        return h, c, *self._attend(self.drop(h), state, position)

    def _output(self, feed: torch.Tensor, weights, state: DecoderState) -> torch.Tensor:
        """Scores over the vocabulary from attentional outputs (B, [T,] H). Where the model
        copies, log-probabilities of the gate's mix of writing and copying: the attention's
        weights over the source (B, [T,] S) are added onto the source characters' ids."""
        logits = self.out(self.drop(feed))
        if state.src is None:
            return logits
        flag = state.use_context if feed.dim() == 2 else state.use_context.unsqueeze(1)
        gate = torch.sigmoid(self.copy_gate(feed)) * flag  # no copying without context
        src = state.src if feed.dim() == 2 else state.src.unsqueeze(1).expand_as(weights)
        mix = torch.softmax(logits, dim=-1) * (1 - gate)
        mix = mix.scatter_add(-1, src, weights * gate)
        return torch.log(mix.clamp_min(1e-12))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, I)) per latent dimension, (B, Z)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Maximum mean discrepancy between samples x (N, Z) and y (M, Z), with inverse
    multiquadratic kernels at several scales (as Wasserstein autoencoders use): near 0
    when both come from one distribution."""
    z = x.size(1)
    both = torch.cat([x, y])
    d2 = torch.cdist(both, both).pow(2)
    k = sum((2.0 * z * s) / (2.0 * z * s + d2) for s in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0))
    n, m = x.size(0), y.size(0)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    off = lambda a, size: (a.sum() - a.diagonal().sum()) / max(1, size * (size - 1))  # noqa: E731
    return off(kxx, n) + off(kyy, m) - 2 * kxy.mean()


def reconstruction_loss(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Cross-entropy summed over each word's characters, (B,); padding is ignored.
    ``smoothing``: label smoothing (training only; 0 is the log-likelihood itself), one
    share for every row or one per row (B,)."""
    if isinstance(smoothing, torch.Tensor):
        nll = reconstruction_loss(logits, target)
        real = (target != PAD).to(logits.dtype)
        spread = (-torch.log_softmax(logits, dim=-1).mean(-1) * real).sum(1)
        share = smoothing.to(logits.dtype)
        return (1 - share) * nll + share * spread
    ce = F.cross_entropy(
        logits.transpose(1, 2),
        target,
        ignore_index=PAD,
        reduction="none",
        label_smoothing=smoothing,
    )
    return ce.sum(dim=1)
