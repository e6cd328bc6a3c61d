"""train(config, on_epoch=..., should_stop=...): a plain PyTorch loop a worker can drive."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from . import artifacts, products
from .config import Config
from .data import (
    Batch,
    Quad,
    batches,
    encode_sources,
    load_test,
    load_train,
    made_up_prefixes,
    made_up_stems,
    make_batch,
    make_pairs,
    prefix_starts,
    regular,
    split_by_verb,
    stack_padded,
    test_words,
)
from .errors import ConfigError, TrainingDiverged
from .evaluate import _decode, bleu_on, exact_by_direction, gaussian
from .model import Posterior, TenseCVAE, kl_divergence, mmd, reconstruction_loss
from .schedules import kl_weight, learning_rate, teacher_forcing
from .vocab import PAD, UNK, Vocab


@dataclass
class EpochReport:
    epoch: int  # 1-based
    epochs: int
    figures: dict[str, float]
    checkpoint: Callable[[], bytes]  # the state to resume from after this epoch
    checkpoint_due: bool  # config.train.checkpoint_every says save now


@dataclass
class TrainResult:
    model: TenseCVAE
    config: Config
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float
    cancelled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(model: TenseCVAE, config: Config) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


PairKey = tuple[str, int, str, int]


def pair_key(pair: tuple[str, int, str, int]) -> PairKey:
    """What tells a pair apart in a batch: the whole pair (source, its tense, target, its
    tense). Data may give one source form and tenses two targets (a user's `lie ... lay` and
    `lie ... lied`): each keeps its own loss and hardness."""
    return pair[0], pair[1], pair[2], pair[3]


def batch_keys(words: list[str], b: Batch, vocab, rows: int) -> list[PairKey | None]:
    """pair_key of each row of a batch, from its source ``words`` (decoded once a step) and
    its targets; rows from ``rows`` on (made-up stems, appended last) are no pair: None."""
    targets = [vocab.decode(ids) for ids in b.tgt_out[:rows].tolist()]
    src, tgt = b.src_tense.tolist(), b.tgt_tense.tolist()
    keys: list[PairKey | None] = [(words[r], src[r], targets[r], tgt[r]) for r in range(rows)]
    return keys + [None] * (len(words) - rows)


class Trainer:
    """One run's state: model, optimizer, random generator, step and history."""

    def __init__(self, config: Config, train_quads: Sequence[Quad], device: torch.device):
        self.config, self.device = config, device
        t = config.train
        kept, self.val_quads = split_by_verb(train_quads, t.val_fraction, t.seed, test_words())
        self.kept = kept[: t.max_lines or None]
        self.pairs = make_pairs(self.kept, t.pairs)
        self._bank: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._bank_step = 0
        self._claims = [0] * len(self.kept)
        # a form's row in the bank: line * 4 + tense (the first line, for a repeated form)
        self._bank_rows: dict[tuple[str, int], int] = {}
        for i, q in enumerate(self.kept):
            for k, w in enumerate(q):
                self._bank_rows.setdefault((w, k), 4 * i + k)
        torch.manual_seed(t.seed)  # weight initialisation
        self.model = TenseCVAE(config.model, Vocab()).to(device)
        self.optimizer = make_optimizer(self.model, config)
        self._params = list(self.model.parameters())  # restore() loads into these same tensors
        # train.ema: the weights' moving average, in the order of _params
        self.ema = [p.detach().clone() for p in self._params] if t.ema else None
        self.generator = torch.Generator().manual_seed(t.seed)
        # each pair's loss when last decoded with attention, for hard_pairs
        self._pair_loss = torch.zeros(len(self.pairs))
        # a pair's rows in pairs, by the whole pair (pair_key): a line repeated in
        # the data gives its pairs once per copy, and a loss or a hard pick counts for all
        self._pair_rows: dict[PairKey, list[int]] = {}
        for i, p in enumerate(self.pairs):
            self._pair_rows.setdefault(pair_key(p), []).append(i)
        # hard_pairs_attend: this epoch's hardest pairs, by key (every copy of one is hard)
        self._hard_keys: set[PairKey] = set()
        # every (form, its tense) of a line that inflects by rule: a pair's line is its source's
        self._regular = (
            {(w, i) for q in self.kept if regular(q) for i, w in enumerate(q)}
            if t.made_up_from == "regular"
            else None
        )
        # made_up_prefixes: the beginnings of the kept verbs, and every word of the data
        # (held-out lines too) and of the lab's test, which a prefixed word must not be
        self._starts = prefix_starts(self.kept) if t.made_up_prefixes else []
        self._known = (
            frozenset(w for q in train_quads for w in q) | test_words()
            if t.made_up_prefixes
            else frozenset()
        )
        self.hard = round(len(self.pairs) * t.hard_pairs)
        self.again = round(len(self.pairs) * t.hard_pairs_again)
        self.steps_per_epoch = math.ceil((len(self.pairs) + self.hard + self.again) / t.batch_size)
        self.total_steps = self.steps_per_epoch * t.epochs
        self.epoch, self.step = 0, 0
        self.history: list[dict[str, float]] = []
        self.best: dict[str, torch.Tensor] | None = None
        self.best_epoch, self.best_score = 0, -math.inf
        self.tests = load_test()
        self.train_quads = list(train_quads)

    # -- checkpoints ----------------------------------------------------------------
    def checkpoint(self) -> bytes:
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "config": self.config.to_dict(),
        }
        if self.hard:
            state["pair_loss"] = self._pair_loss.tolist()
        return artifacts.checkpoint_to_bytes(
            self.model, self.optimizer, self.generator.get_state(), state, self.best, self.ema
        )

    def restore(self, data: bytes) -> None:
        parts = artifacts.checkpoint_from_bytes(data)
        self.model.load_state_dict(parts["model"].state_dict())
        self.optimizer.load_state_dict(parts["optimizer"])
        self.generator.set_state(parts["rng"])
        if parts["torch_rng"] is not None:
            torch.set_rng_state(parts["torch_rng"])
        s = parts["state"]
        self.epoch, self.step, self.history = s["epoch"], s["step"], s["history"]
        self.best_epoch, self.best_score = s["best_epoch"], s["best_score"]
        self.best = parts["best"]
        if self.hard and "pair_loss" in s:
            self._pair_loss = torch.tensor(s["pair_loss"])
        if self.ema is not None:  # a checkpoint without an average starts one from here
            saved = parts["ema"]
            self.ema = [
                (saved[i] if saved else p.detach()).clone().to(p.device)
                for i, p in enumerate(self._params)
            ]

    @torch.no_grad()
    def put_weights(self, values: list[torch.Tensor]) -> None:
        """Copy ``values`` (in parameter order) into the model's parameters."""
        for p, v in zip(self._params, values, strict=True):
            p.copy_(v)

    @contextmanager
    def averaged(self):
        """The model with the weights' moving average in place (train.ema), its trained
        weights back afterwards; nothing changes without an average."""
        if self.ema is None:
            yield
            return
        trained = [p.detach().clone() for p in self._params]
        self.put_weights(self.ema)
        try:
            yield
        finally:
            self.put_weights(trained)

    # -- one step -------------------------------------------------------------------
    def _drop_words(self, tokens: torch.Tensor) -> torch.Tensor:
        p = self.config.train.word_dropout
        if p <= 0:
            return tokens
        drop = torch.rand(tokens.shape, generator=self.generator).to(tokens.device) < p
        drop[:, 0] = False  # the start token stays
        return tokens.masked_fill(drop & (tokens > UNK), UNK)

    def _logits(self, tgt_in: torch.Tensor, state, tf: float) -> torch.Tensor:
        inputs = self._drop_words(tgt_in)
        if tf >= 1.0:
            return self.model.decode(inputs, state)
        # Scheduled sampling: per word and step, feed the true character with probability tf.
        coins = torch.rand(inputs.shape, generator=self.generator).to(inputs.device) < tf
        token, out = inputs[:, 0], []
        for i in range(inputs.size(1)):
            logits, state = self.model.decode_step(token, state)
            out.append(logits)
            if i + 1 < inputs.size(1):
                token = torch.where(coins[:, i + 1], inputs[:, i + 1], logits.argmax(-1))
        return torch.stack(out, dim=1)

    @staticmethod
    def _kl(mu, logvar, used: torch.Tensor | None) -> tuple[torch.Tensor, float]:
        """KL per latent dimension (Z,), averaged over the words whose z came from their
        posterior, and the share of the batch those words are. A word decoded from prior
        noise (context_prior_z) never used q(z|x), so its ELBO has no KL term."""
        kl = kl_divergence(mu, logvar)  # (B, Z)
        if used is None:
            return kl.mean(0), 1.0
        n = int(used.sum())
        if n == 0:
            return kl.new_zeros(kl.size(1)), 0.0
        return kl[used].mean(0), n / kl.size(0)

    # -- the prior's regions -----------------------------------------------------------
    def _refresh_bank(self) -> None:
        """The posterior of every form of every training line, as the terms of
        -2 log q(z | form) that a prior draw is scored against."""
        m = self.model
        words = [w for q in self.kept for w in q]
        tenses = [i for _ in self.kept for i in range(4)]
        m.eval()
        mus, logvars = [], []
        with torch.no_grad():
            for s in range(0, len(words), 4096):
                ids, lengths = encode_sources(words[s : s + 4096], m.vocab)
                src_tense = torch.tensor(tenses[s : s + 4096], device=self.device)
                post = m.encode(ids.to(self.device), lengths, src_tense)
                mus.append(post.mu)
                logvars.append(post.logvar)
        m.train()
        self._bank = self._bank_terms(torch.cat(mus), torch.cat(logvars))
        self._bank_step = self.step

    @staticmethod
    def _bank_terms(mu, logvar):
        inv = torch.exp(-logvar)
        return inv, mu * inv, (mu * mu * inv).sum(1) + logvar.sum(1)

    def _source_words(self, b: Batch) -> list[str]:
        """The batch's source words as strings, decoded once a step for the bank and the
        pair losses alike."""
        return [self.model.vocab.decode(ids) for ids in b.src.tolist()]

    def _update_bank(
        self, b: Batch, mu: torch.Tensor, logvar: torch.Tensor, words: list[str] | None = None
    ) -> None:
        """Every step encodes a batch of training forms anyway: their posteriors replace
        theirs in the bank, so it stays about as fresh as full re-encodings would keep it
        (each form is a source four times an epoch) without their cost."""
        words = self._source_words(b) if words is None else words
        rows, keep = [], []
        for i, (word, tense) in enumerate(zip(words, b.src_tense.tolist(), strict=True)):
            row = self._bank_rows.get((word, tense))
            if row is not None:
                rows.append(row)
                keep.append(i)
        if not rows:
            return
        index = torch.tensor(rows, device=mu.device)
        keep_t = torch.tensor(keep, device=mu.device)
        fresh = self._bank_terms(mu.detach()[keep_t], logvar.detach()[keep_t])
        for table, values in zip(self._bank, fresh, strict=True):
            table[index] = values

    def _prior_draws(self) -> tuple[torch.Tensor, Batch]:
        """prior_words draws z ~ N(0, I) and the batch that teaches each one the training
        verb whose posterior is likeliest there, decoded from z alone in a random tense, or
        in all four (prior_tenses 4)."""
        t, m = self.config.train, self.model
        if self._bank is None or self.step - self._bank_step >= t.prior_refresh:
            self._refresh_bank()
        inv, mu_inv, const = self._bank
        z = torch.randn(t.prior_words, m.config.latent_size, generator=self.generator)
        z = z.to(self.device)
        # sum over dimensions of (z - mu)^2 / var + log var, for every (draw, form)
        distance = (z * z) @ inv.T - 2 * z @ mu_inv.T + const
        lines = (distance.argmin(1) // 4).tolist()
        followed = lines
        took = [False] * len(lines)  # whether each draw follows the verb sp writes there
        if t.prior_anchor != "posterior":
            near = None
            if t.prior_anchor_top:
                k = min(t.prior_anchor_top, distance.size(1))
                near = [set(r) for r in (distance.topk(k, largest=False).indices // 4).tolist()]
            followed, anchored = list(lines), 0
            claims = self._claims
            limit = t.prior_anchor_cap * max(1.0, sum(claims) / len(claims))
            under = t.prior_anchor_cap and t.prior_anchor_fallback == "under_cap"
            for j, word in enumerate(self._simple_presents(z)):
                row = self._bank_rows.get((word, 0))
                line = None if row is None else row // 4
                if line is not None and near is not None and line not in near[j]:
                    line = None  # too far from the draw
                if line is not None and t.prior_anchor_cap and claims[line] >= limit:
                    line = None  # over the cap
                if line is not None:
                    followed[j], anchored, took[j] = line, anchored + 1, True
                elif under and claims[lines[j]] >= limit:
                    followed[j] = self._likeliest_under(distance[j], claims, limit)
            self._prior_anchored = anchored / len(lines)
            if t.prior_anchor == "sp":
                lines = followed
            for line in followed:
                claims[line] += 1
        if t.prior_tenses == 4:
            # each draw in its four tenses, but with prior_anchor_reteach off not in the
            # simple present the decoder already writes there
            skip_sp = t.prior_anchor == "sp" and not t.prior_anchor_reteach
            keep = [
                (j, k)
                for j in range(len(lines))
                for k in range(4)
                if k or not (skip_sp and took[j])
            ]
            z = z[torch.tensor([j for j, _ in keep], device=z.device)]
            lines = [lines[j] for j, _ in keep]
            followed = [followed[j] for j, _ in keep]
            tenses = [k for _, k in keep]
        else:
            tenses = torch.randint(4, (len(lines),), generator=self.generator).tolist()
        # the simple present from ``lines``; the other tenses from ``followed``
        quads = [
            self.kept[a if k == 0 else b] for a, b, k in zip(lines, followed, tenses, strict=True)
        ]
        pairs = [(q[k], k, q[k], k) for q, k in zip(quads, tenses, strict=True)]
        return z, make_batch(pairs, m.vocab).to(self.device)

    @staticmethod
    def _likeliest_under(distance: torch.Tensor, claims: list[int], limit: float) -> int:
        """The line whose posterior is likeliest at a draw (its ``distance`` to every
        form) among those followed fewer than ``limit`` times; the likeliest of all if none."""
        order = (distance.argsort() // 4).tolist()
        return next((line for line in order if claims[line] < limit), order[0])

    def _simple_presents(self, z: torch.Tensor) -> list[str]:
        """The simple present the decoder writes from each z alone, greedily, as generation
        would (no dropout, no gradient)."""
        m = self.model
        m.eval()
        with torch.no_grad():
            sp = torch.zeros(z.size(0), dtype=torch.long, device=z.device)
            words = _decode(m, m.init_decoder(z, sp), z.size(0))
        m.train()
        return words

    def _join_prior(self, z, b: Batch, post: Posterior, use_context):
        """The word batch with the prior's draws appended as more rows, so that one decode
        serves both: a draw's row has nothing to attend to (context flag 0, one blank
        memory position) and, like a word without context, is decoded from z alone."""
        zp, bp = self._prior_draws()
        n, P = z.size(0), zp.size(0)
        z = torch.cat([z, zp])
        tense = torch.cat([b.tgt_tense, bp.tgt_tense])
        tgt_in, tgt_out = stack_padded(b.tgt_in, bp.tgt_in), stack_padded(b.tgt_out, bp.tgt_out)
        if not self.model.config.attention:
            return self.model.init_decoder(z, tense), tgt_in, tgt_out, n
        memory = torch.cat([post.memory, post.memory.new_zeros(P, *post.memory.shape[1:])])
        blank = torch.zeros(P, post.mask.size(1), dtype=torch.bool, device=z.device)
        blank[:, 0] = True  # one position, so the softmax over it is defined
        mask = torch.cat([post.mask, blank])
        flag = use_context if use_context is not None else z.new_ones(n, dtype=torch.bool)
        flag = torch.cat([flag, flag.new_zeros(P)])
        src = None
        if post.src is not None:
            src = torch.cat([post.src, post.src.new_full((P, post.src.size(1)), PAD)])
        joined = Posterior(post.mu, post.logvar, memory, mask, src)
        return self.model.init_decoder(z, tense, joined, flag), tgt_in, tgt_out, n

    def train_step(self, b: Batch) -> dict[str, float]:
        t, m = self.config.train, self.model
        beta = kl_weight(
            self.step,
            self.total_steps,
            schedule=t.kl_schedule,
            kl_max=t.kl_max,
            warmup=t.kl_warmup,
            cycles=t.kl_cycles,
            ratio=t.kl_ratio,
        )
        tf = teacher_forcing(
            self.step, self.total_steps, start=t.tf_start, end=t.tf_end, shape=t.tf_shape
        )
        made_up = 0
        if t.made_up_stems > 0:  # validated to come with attention
            eligible = None
            if self._regular is not None:
                rows = zip(self._source_words(b), b.src_tense.tolist(), strict=True)
                eligible = torch.tensor([r in self._regular for r in rows], dtype=torch.bool)
            b, made_up = made_up_stems(
                b, m.vocab, t.made_up_stems, self.generator, eligible=eligible
            )
        if t.made_up_prefixes > 0:  # validated to come with attention; appended after them
            b, prefixed = made_up_prefixes(
                b,
                m.vocab,
                t.made_up_prefixes,
                self.generator,
                self._starts,
                self._known,
                m.config.max_length,
            )
            made_up += prefixed
        post = m.encode(b.src, b.src_len, b.src_tense)
        fresh_bank = t.prior_weight > 0 and self._bank is not None
        words = self._source_words(b) if fresh_bank or self.hard else None
        keys = batch_keys(words, b, m.vocab, b.src.size(0) - made_up) if self.hard else None
        hard = None  # the rows of the epoch's hardest pairs, where an option treats them apart
        if keys is not None and (t.hard_pairs_attend or not t.label_smoothing_hard):
            hard = torch.tensor([k in self._hard_keys for k in keys], dtype=torch.bool)
        if fresh_bank:
            self._update_bank(b, post.mu, post.logvar, words)
        z = posterior_z = m.reparameterize(post.mu, post.logvar, self.generator)
        use_context = posterior_used = None
        if m.config.attention:
            keep = torch.rand(z.size(0), generator=self.generator) >= m.config.context_dropout
            if t.hard_pairs_attend:  # the epoch's hardest pairs always attend
                keep |= hard
            if made_up:  # made-up stems can only be copied: they always attend
                keep[z.size(0) - made_up :] = True
            use_context = keep.to(z.device)
            if m.config.context_prior_z:
                noise = torch.randn(z.shape, generator=self.generator).to(z.device)
                from_prior = use_context
                if m.config.context_posterior_share > 0:
                    held = torch.rand(z.size(0), generator=self.generator)
                    held = (held < m.config.context_posterior_share).to(z.device)
                    from_prior = use_context & ~held
                z = torch.where(from_prior.unsqueeze(1), noise, z)
                posterior_used = ~from_prior
        extra = {}
        if t.prior_weight > 0:
            state, tgt_in, tgt_out, n = self._join_prior(z, b, post, use_context)
            per_word = reconstruction_loss(
                self._logits(tgt_in, state, tf), tgt_out, self._smoothing(tgt_out, hard)
            )
            self._note_losses(b, per_word[:n], use_context, keys)
            recon, prior = per_word[:n].mean(), per_word[n:].mean()
            extra["prior_recon"] = prior.item()
            if t.prior_anchor != "posterior":
                extra["prior_anchored"] = self._prior_anchored
        else:
            state = m.init_decoder(z, b.tgt_tense, post, use_context)
            per_word = reconstruction_loss(
                self._logits(b.tgt_in, state, tf), b.tgt_out, self._smoothing(b.tgt_out, hard)
            )
            self._note_losses(b, per_word, use_context, keys)
            recon = per_word.mean()
        kl_dims, share = self._kl(post.mu, post.logvar, posterior_used)
        kl_sum = kl_dims.clamp(min=t.free_bits).sum() if t.free_bits > 0 else kl_dims.sum()
        kl_term = share * (kl_sum.clamp(min=t.free_nats) if t.free_nats > 0 else kl_sum)
        loss = recon + beta * kl_term
        if t.prior_weight > 0:
            loss = loss + t.prior_weight * prior
        if t.mmd_weight > 0:
            used = posterior_z if posterior_used is None else posterior_z[posterior_used]
            if used.size(0) >= 2:
                prior = torch.randn(used.shape, generator=self.generator).to(used.device)
                gap = mmd(used, prior)
                loss = loss + t.mmd_weight * gap
                extra["mmd"] = gap.item()
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step}"
            )
        rate = learning_rate(
            self.step, self.total_steps, lr=t.lr, schedule=t.lr_schedule, floor=t.lr_floor
        )
        for group in self.optimizer.param_groups:  # from the step count, so resumes agree
            group["lr"] = rate
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(m.parameters(), t.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, self._params, 1.0 - t.ema)
        self.step += 1
        return {
            "loss": loss.item(),
            "recon": recon.item(),
            "kl": kl_dims.sum().item(),
            "beta": beta,
            "teacher_forcing": tf,
            "lr": rate,
            **extra,
        }

    def _smoothing(self, target: torch.Tensor, hard: torch.Tensor | None) -> float | torch.Tensor:
        """Label smoothing for a step's decoded rows (the batch's, then any prior draws'):
        train.label_smoothing for each, or, with train.label_smoothing_hard false, none for
        the rows of the epoch's hardest pairs (``hard``, over the batch's rows)."""
        t = self.config.train
        if t.label_smoothing_hard or hard is None:
            return t.label_smoothing
        share = torch.full((target.size(0),), t.label_smoothing)
        share[: hard.numel()][hard] = 0.0
        return share.to(target.device)

    def _note_losses(self, b: Batch, per_word: torch.Tensor, use_context, keys=None) -> None:
        """For hard_pairs: the loss of each pair of the batch decoded with attention (or of
        every pair, without attention), found by its rows' ``keys`` (``batch_keys``, made
        here for a batch of pairs alone if not given). Made-up stems, whose keys are None,
        are no pair and are passed over, even where one spells a real pair."""
        if not self.hard:
            return
        rows = range(per_word.size(0)) if use_context is None else use_context.nonzero()[:, 0]
        losses = per_word.detach().cpu()
        if keys is None:
            keys = batch_keys(self._source_words(b), b, self.model.vocab, b.src.size(0))
        for r in [int(r) for r in rows]:
            if keys[r] is not None:
                for i in self._pair_rows.get(keys[r], ()):
                    self._pair_loss[i] = losses[r]

    def epoch_pairs(self) -> list[tuple[str, int, str, int]]:
        """The epoch's pairs: every pair, and with hard_pairs the hardest again (ties, as in
        the first epoch, broken at random), and with hard_pairs_again the hardest of those a
        third time."""
        if not self.hard:
            return self.pairs
        jitter = torch.rand(len(self.pairs), generator=self.generator) * 1e-3
        hardest = (self._pair_loss + jitter).topk(self.hard).indices.tolist()  # hardest first
        self._hard_keys = {pair_key(self.pairs[i]) for i in hardest}
        return self.pairs + [self.pairs[i] for i in hardest + hardest[: self.again]]

    # -- one epoch ------------------------------------------------------------------
    def run_epoch(self, should_stop: Callable[[], bool] | None) -> dict[str, float] | None:
        t = self.config.train
        self.model.train()
        sums: dict[str, float] = {}
        n, start = 0, time.perf_counter()
        self._bank = None  # encoded afresh at each epoch's start (and so after a resume)
        self._claims = [0] * len(self.kept)  # draws each verb was followed in, this epoch
        for b in batches(self.epoch_pairs(), self.model.vocab, t.batch_size, self.generator):
            if should_stop is not None and should_stop():
                return None
            figures = self.train_step(b.to(self.device))
            for k, v in figures.items():
                sums[k] = sums.get(k, 0.0) + v * b.src.size(0)
            n += b.src.size(0)
        seconds = time.perf_counter() - start
        self.epoch += 1
        out = {k: v / n for k, v in sums.items()}
        out.update(
            beta=figures["beta"],
            teacher_forcing=figures["teacher_forcing"],
            epoch=self.epoch,
            seconds=seconds,
            words_per_s=n / seconds,
        )
        if self.epoch % t.eval_every == 0 or self.epoch == t.epochs:
            with self.averaged():  # scored, and kept as best, as training hands it back
                out.update(self.scores())
                self._select(out)
        self.history.append(out)
        return out

    def scores(self) -> dict[str, float]:
        t, m = self.config.train, self.model
        out = {"bleu4": bleu_on(m, self.tests)["bleu4"]}
        if t.eval_gaussian_draws:
            g = gaussian(m, self.train_quads, draws=t.eval_gaussian_draws, seed=t.seed + self.epoch)
            out.update(gaussian_score=g["mean"], distinct_verbs=g["distinct_verbs_mean"])
        if self.val_quads:
            ex = exact_by_direction(m, self.val_quads)
            out.update(val_exact=ex["mean"], val_sp_exact=ex["sp_mean"])
        return out

    def _select(self, figures: dict[str, float]) -> None:
        key = self.config.train.select
        if key == "last":
            self.best_epoch = self.epoch
            return
        score = figures[key]
        if score >= self.best_score:
            self.best_score, self.best_epoch = score, self.epoch
            self.best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def train(
    config: Config,
    on_epoch: Callable[[EpochReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bytes | None = None,
    train_quads: Sequence[Quad] | None = None,
) -> TrainResult:
    """Train a TenseCVAE. ``on_epoch`` gets each epoch's figures and a checkpoint callable;
    ``should_stop`` is asked before every batch; ``resume`` is a checkpoint's bytes."""
    t = config.train
    if t.threads:
        torch.set_num_threads(t.threads)
    with products.training():  # TENSEVAE_PRODUCTS=auto: torch's products, as ever
        trainer = Trainer(
            config, load_train() if train_quads is None else train_quads, resolve_device(t.device)
        )
        if resume is not None:
            trainer.restore(resume)
        start = time.perf_counter()
        cancelled = False
        while trainer.epoch < t.epochs:
            figures = trainer.run_epoch(should_stop)
            if figures is None:
                cancelled = True
                break
            if on_epoch is not None:
                due = trainer.epoch % t.checkpoint_every == 0 or trainer.epoch == t.epochs
                on_epoch(EpochReport(trainer.epoch, t.epochs, figures, trainer.checkpoint, due))
    if trainer.best is not None and not cancelled:
        trainer.model.load_state_dict(trainer.best)
    elif trainer.ema is not None and not cancelled:
        trainer.put_weights(trainer.ema)
    trainer.model.eval()
    return TrainResult(
        trainer.model,
        config,
        trainer.history,
        trainer.best_epoch,
        time.perf_counter() - start,
        cancelled,
        {"val_verbs": [q[0] for q in trainer.val_quads]},
    )
