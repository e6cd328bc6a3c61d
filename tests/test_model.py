from dataclasses import replace

import pytest
import torch

from pipeline import decoding
from pipeline.config import ModelConfig
from pipeline.data import make_batch
from pipeline.model import TenseCVAE, kl_divergence, lstm_cell, mmd, reconstruction_loss, tanh
from pipeline.vocab import EOS, PAD, SOS, Vocab

PAIRS = [("walk", 0, "walked", 3), ("go", 0, "went", 3), ("abandoning", 2, "abandons", 1)]
MIXED = [*PAIRS, ("sing", 0, "sang", 3), ("be", 0, "being", 2), ("internationalize", 0, "x", 3)]


def _model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=16, latent_size=4, tense_embedding=3, char_embedding=8, **kw)
    return TenseCVAE(cfg, Vocab()).eval()


def test_shapes_and_losses():
    for kw in (
        {},
        {"attention": True, "bidirectional": True, "decoder_input_z": True},
        {"attention": True, "decoder_input_z": True, "latent_memory": 5, "latent_memory_size": 6},
        {"attention": True, "bidirectional": True, "copy": True},
        {"attention": True, "copy": True, "position_bias": 2},
    ):
        m = _model(**kw)
        b = make_batch(PAIRS, m.vocab)
        post = m.encode(b.src, b.src_len, b.src_tense)
        assert post.mu.shape == (3, 4) and post.logvar.shape == (3, 4)
        assert (
            post.memory.shape[:2] == b.src.shape
            and post.mask.sum().item() == b.src_len.sum().item()
        )
        logits = m.decode(b.tgt_in, m.init_decoder(post.mu, b.tgt_tense, post))
        assert logits.shape == (*b.tgt_in.shape, m.vocab.size)
        assert reconstruction_loss(logits, b.tgt_out).shape == (3,)
        assert kl_divergence(post.mu, post.logvar).shape == (3, 4)


def test_padding_never_reaches_the_loss():
    m = _model()
    b = make_batch(PAIRS, m.vocab)
    post = m.encode(b.src, b.src_len, b.src_tense)
    logits = m.decode(b.tgt_in, m.init_decoder(post.mu, b.tgt_tense, post))
    loss = reconstruction_loss(logits, b.tgt_out)
    garbage = logits.clone()
    garbage[b.tgt_out == PAD] = 1e3  # whatever stands at padded positions must not count
    assert torch.allclose(loss, reconstruction_loss(garbage, b.tgt_out))


def test_label_smoothing_spreads_a_share_of_each_target_over_the_alphabet():
    m = _model(attention=True, copy=True)
    b = make_batch(PAIRS, m.vocab)
    post = m.encode(b.src, b.src_len, b.src_tense)
    logits = m.decode(b.tgt_in, m.init_decoder(post.mu, b.tgt_tense, post))
    plain = reconstruction_loss(logits, b.tgt_out)
    assert torch.equal(reconstruction_loss(logits, b.tgt_out, 0.0), plain)
    logp = torch.log_softmax(logits, dim=-1)  # the copy mix's log-probabilities already
    real = b.tgt_out != PAD
    uniform = (-logp.mean(-1) * real).sum(1)  # each real character's mean surprise
    expected = 0.9 * plain + 0.1 * uniform
    assert torch.allclose(reconstruction_loss(logits, b.tgt_out, 0.1), expected, atol=1e-5)
    assert (reconstruction_loss(logits, b.tgt_out, 0.1) != plain).all()
    by_row = reconstruction_loss(logits, b.tgt_out, torch.tensor([0.1, 0.0, 0.1]))
    assert torch.allclose(by_row, torch.stack([expected[0], plain[1], expected[2]]), atol=1e-5)


def test_encoder_ignores_padding():
    m = _model(bidirectional=True, attention=True)
    alone = make_batch([PAIRS[1]], m.vocab)
    padded = make_batch(PAIRS[:2], m.vocab)
    a = m.encode(alone.src, alone.src_len, alone.src_tense).mu[0]
    b = m.encode(padded.src, padded.src_len, padded.src_tense).mu[1]
    assert torch.allclose(a, b, atol=1e-6)


def test_teacher_forced_and_step_by_step_decoding_agree():
    for kw in (
        {},
        {"attention": True, "decoder_input_z": True},
        {"attention": True, "decoder_input_z": True, "latent_memory": 5},
        {"attention": True, "decoder_input_z": True, "copy": True},
        {"attention": True, "copy": True, "position_bias": 3},
    ):
        m = _model(**kw)
        if kw.get("position_bias"):  # a bias that differs by offset, so steps must keep count
            with torch.no_grad():
                m.position_bias.copy_(torch.linspace(-2.0, 3.0, m.position_bias.numel()))
        b = make_batch(PAIRS, m.vocab)
        post = m.encode(b.src, b.src_len, b.src_tense)
        state = m.init_decoder(post.mu, b.tgt_tense, post)
        full = m.decode(b.tgt_in, state)
        steps = []
        for t in range(b.tgt_in.size(1)):
            logits, state = m.decode_step(b.tgt_in[:, t], state)
            steps.append(logits)
        # Where a row's word has ended (its input is padding) nothing is scored, and the
        # teacher-forced decoder stops writing that row.
        live = b.tgt_in != PAD
        assert torch.allclose(full[live], torch.stack(steps, 1)[live], atol=1e-5)


@pytest.mark.parametrize(
    "kw",
    [
        {"attention": True, "decoder_input_z": True},
        {"attention": True, "bidirectional": True, "copy": True, "position_bias": 3},
    ],
)
@torch.no_grad()
def test_decoding_from_the_sources_keys_is_the_per_step_attention(kw):
    """Out of training, init_decoder multiplies the source by the attention's key and
    combining weights once (source_keys) and the steps score those: the same logits as the
    steps that project every output and context, for rows that attend and rows that may
    not, and as teacher-forced decoding."""
    m = _model(**kw)
    if kw.get("position_bias"):
        m.position_bias.copy_(torch.linspace(-2.0, 3.0, m.position_bias.numel()))
    b = make_batch(MIXED, m.vocab)
    post = m.encode(b.src, b.src_len, b.src_tense)
    use = torch.tensor([1, 0, 1, 1, 0, 1])
    keyed = m.init_decoder(post.mu, b.tgt_tense, post, use)
    assert keyed.keys is not None and keyed.keys.shape == (*b.src.shape, 16)
    plain = replace(keyed, keys=None, values=None)
    full = m.decode(b.tgt_in, plain)
    a_steps, b_steps, tgt = [], [], b.tgt_in
    for t in range(tgt.size(1)):
        logits, keyed = m.decode_step(tgt[:, t], keyed)
        a_steps.append(logits)
        logits, plain = m.decode_step(tgt[:, t], plain)
        b_steps.append(logits)
        if t == 2:  # rows leave and are reordered as greedy and beam search do
            index = torch.tensor([5, 3, 1, 0])
            keyed, plain = keyed.select(index), plain.select(index)
            full, tgt = full[index], tgt[index]
            a_steps = [x[index] for x in a_steps]
            b_steps = [x[index] for x in b_steps]
    live = tgt != PAD
    a_all, b_all = torch.stack(a_steps, 1), torch.stack(b_steps, 1)
    assert torch.allclose(a_all[live], b_all[live], atol=1e-5)
    assert torch.allclose(a_all[live], full[live], atol=1e-5)
    with torch.enable_grad():  # training's steps keep the per-step products
        assert m.init_decoder(post.mu, b.tgt_tense, post).keys is None


@pytest.mark.parametrize("bidirectional", [True, False])
def test_encoder_over_the_padded_batch_is_the_packed_lstm(bidirectional):
    """encode runs each direction over the padded batch (the backward one on words reversed
    within their lengths): the same states, outputs and gradients as nn.LSTM over a packed
    sequence, which reads each word exactly to its end."""
    from torch import nn

    m = _model(attention=True, bidirectional=bidirectional)
    b = make_batch(MIXED, m.vocab)
    assert len(set(b.src_len.tolist())) > 3  # words of many lengths, so padding matters
    weigh = torch.randn(b.src.size(0), b.src.size(1), (2 if bidirectional else 1) * 16)

    def reference():
        B, D = b.src.size(0), 2 if bidirectional else 1
        init = torch.tanh(m.enc_init(m.tenses(b.src_tense)))
        h0, c0 = init.view(B, 2, D, -1).permute(1, 2, 0, 3).contiguous()
        packed = nn.utils.rnn.pack_padded_sequence(
            m.chars(b.src), b.src_len, batch_first=True, enforce_sorted=False
        )
        out, (h, _) = m.encoder(packed, (h0, c0))
        memory, _ = nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=b.src.size(1)
        )
        return m.to_mu(h.transpose(0, 1).reshape(B, -1)), memory

    def run(fn):
        m.zero_grad()
        mu, memory = fn()
        ((mu * torch.arange(1.0, 5.0)).sum() + (memory * weigh).sum()).backward()
        return (
            mu,
            memory,
            {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None},
        )

    def ours():
        post = m.encode(b.src, b.src_len, b.src_tense)
        return post.mu, post.memory

    mu, memory, grads = run(ours)
    mu_ref, memory_ref, grads_ref = run(reference)
    assert torch.allclose(mu, mu_ref, atol=1e-6)
    assert torch.allclose(memory, memory_ref, atol=1e-6)
    assert (memory[b.src == PAD] == 0).all()
    assert grads.keys() == grads_ref.keys() and "encoder.weight_hh_l0" in grads
    for k in grads:
        assert torch.allclose(grads[k], grads_ref[k], atol=1e-5), k


@pytest.mark.parametrize("flags", [[1, 0, 1, 0, 0, 1], [0] * 6, [1] * 6])
def test_teacher_forced_decoding_matches_steps_in_values_and_gradients(flags):
    """The teacher-forced decoder regroups decode_step's work (rows that may not attend skip
    attention, the memory is projected once, the steps' weight gradients are one product):
    the same logits and the same gradient for every parameter, rows of every length, with
    and without context."""
    m = _model(
        attention=True,
        bidirectional=True,
        decoder_input_z=True,
        copy=True,
        latent_memory=5,
        position_bias=2,
    )
    with torch.no_grad():
        m.position_bias.copy_(torch.linspace(-1.0, 2.0, m.position_bias.numel()))
    b = make_batch(MIXED, m.vocab)
    use = torch.tensor(flags)

    def loss_and_grads(teacher_forced: bool):
        m.zero_grad()
        post = m.encode(b.src, b.src_len, b.src_tense)
        state = m.init_decoder(post.mu, b.tgt_tense, post, use)
        state = replace(state, feed=torch.tanh(state.h[0]))  # a fed-back start that is not 0
        if teacher_forced:
            logits = m.decode(b.tgt_in, state)
        else:
            steps = []
            for t in range(b.tgt_in.size(1)):
                out, state = m.decode_step(b.tgt_in[:, t], state)
                steps.append(out)
            logits = torch.stack(steps, 1)
        loss = reconstruction_loss(logits, b.tgt_out)
        (loss * torch.arange(1.0, 7.0)).sum().backward()  # each row weighed differently
        # a part left out of the graph (attention, where no row attends) has gradient 0
        grads = {
            k: torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for k, p in m.named_parameters()
        }
        return logits, loss, grads

    full, loss_full, g_full = loss_and_grads(True)
    step, loss_step, g_step = loss_and_grads(False)
    live = b.tgt_in != PAD
    assert torch.allclose(full[live], step[live], atol=1e-5)
    assert torch.allclose(loss_full, loss_step, atol=1e-4)
    assert g_full["decoder.weight_hh_l0"].abs().sum() > 0
    if any(flags):
        assert g_full["attn_key.weight"].abs().sum() > 0
    for k in g_full:
        assert torch.allclose(g_full[k], g_step[k], atol=1e-5, rtol=1e-4), k


def test_latent_memory_reads_the_slot_whose_key_z_sits_on():
    m = _model(attention=True, latent_memory=7, latent_memory_size=3)
    with torch.no_grad():
        m.memory_log_scale.fill_(5.0)  # sharp: e^5 times squared distance
        keys = m.memory_keys
        read = m.read_memory(keys[[2, 5]])
        assert torch.allclose(read, m.memory_values[[2, 5]], atol=1e-4)
        # halfway between two keys (with the rest far away) reads their mean
        far = torch.full_like(keys, 50.0)
        far[0], far[1] = torch.zeros(4), torch.ones(4)
        keys.copy_(far)
        half = m.read_memory(torch.full((1, 4), 0.5))[0]
        assert torch.allclose(half, m.memory_values[:2].mean(0), atol=1e-4)
    # the read joins z and the tense in the decoder's condition
    state = m.init_decoder(torch.zeros(2, 4), torch.tensor([0, 3]))
    assert state.cond.shape == (2, 4 + 3 + 3)


def test_a_hard_memory_read_is_one_slot_and_passes_the_soft_gradient():
    m = _model(attention=True, latent_memory=7, latent_memory_size=3, latent_memory_read="hard")
    z = torch.randn(5, 4)
    with torch.no_grad():
        soft_logits = -m.memory_log_scale.exp() * torch.cdist(z, m.memory_keys).pow(2)
        slot = soft_logits.argmax(-1)
        # every z reads exactly its nearest key's value, however soft the scale
        assert torch.equal(m.read_memory(z), m.memory_values[slot])
    m.train()
    read = m.read_memory(z)  # with gradients: the same values in the forward pass
    assert torch.allclose(read, m.memory_values[slot].detach(), atol=1e-6)
    read.sum().backward()
    # the keys and the scale learn through the softmax (straight-through), and only the
    # slots read get a value gradient
    assert m.memory_keys.grad.abs().sum() > 0 and m.memory_log_scale.grad is not None
    touched = m.memory_values.grad.abs().sum(1) > 0
    assert set(touched.nonzero().squeeze(1).tolist()) == set(slot.tolist())


def test_moving_average_keys_follow_their_z_and_dead_slots_restart_on_the_farthest():
    m = _model(
        attention=True,
        latent_memory=3,
        latent_memory_size=2,
        latent_memory_read="hard",
        latent_memory_ema=0.5,
    )
    with torch.no_grad():
        m.memory_keys.copy_(torch.tensor([[0.0] * 4, [10.0] * 4, [-10.0] * 4]))
        m.memory_sums.copy_(m.memory_keys)
        m.memory_counts.fill_(1.0)
        m.memory_counts[2] = 1e-4  # slot 2 has had no z for a long while
    z = torch.tensor([[1.0] * 4, [1.0] * 4, [9.0] * 4, [9.0] * 4, [0.5] * 4, [30.0] * 4])
    m.train()
    m.read_memory(z)
    keys = m.memory_keys.detach()
    # slot 0 had sum 0 over count 1 and takes three z summing to 2.5, at decay 0.5
    assert torch.allclose(keys[0], torch.full((4,), (0.5 * 2.5) / (0.5 + 0.5 * 3)))
    # slot 1: (0.5 * 10 + 0.5 * (9 + 9 + 30)) / (0.5 + 0.5 * 3)
    assert torch.allclose(keys[1], torch.full((4,), (5.0 + 24.0) / 2.0))
    # slot 2 was dead: it restarts on the z farthest from any key (30) with slot 1's value
    assert torch.allclose(keys[2], torch.full((4,), 30.0))
    assert torch.equal(m.memory_values[2], m.memory_values[1])
    # reads out of training leave the keys alone; the keys take no gradient
    m.eval()
    m.read_memory(z)
    assert torch.equal(m.memory_keys.detach(), keys)
    m.train()
    m.read_memory(z).sum().backward()
    assert m.memory_keys.grad is None


def test_without_latent_memory_z_the_decoder_sees_z_only_through_the_memory():
    m = _model(
        attention=True,
        decoder_input_z=True,
        latent_memory=7,
        latent_memory_size=3,
        latent_memory_read="hard",
        latent_memory_z=False,
    )
    key = m.memory_keys[4].detach()
    near = torch.stack([key, key + 1e-3])  # two z in the same slot's region
    state = m.init_decoder(near, torch.tensor([1, 1]))
    assert state.cond.shape == (2, 3 + 3)  # the tense and the read, no z
    assert torch.equal(state.cond[0], state.cond[1])
    assert torch.allclose(state.h[0, 0], state.h[0, 1], atol=1e-6)


@pytest.mark.parametrize("init_tense", [True, False])
def test_decoder_init_tense_decides_whether_a_zs_four_tenses_start_alike(init_tense):
    m = _model(attention=True, decoder_input_z=True, decoder_init_tense=init_tense)
    z = torch.randn(1, m.config.latent_size).expand(4, -1)
    state = m.init_decoder(z, torch.arange(4))
    starts_alike = all(torch.equal(state.h[0, 0], state.h[0, i]) for i in range(1, 4))
    assert starts_alike is not init_tense
    assert not torch.equal(state.pre[0], state.pre[1])  # the tense still enters every step


def test_copying_puts_the_gates_share_on_the_source_characters():
    m = _model(attention=True, copy=True)
    b = make_batch(PAIRS, m.vocab)
    post = m.encode(b.src, b.src_len, b.src_tense)
    with torch.no_grad():
        m.copy_gate.bias.fill_(30.0)  # copy, always
        logp = m.decode(b.tgt_in, m.init_decoder(post.mu, b.tgt_tense, post))
        probs = logp.exp()
        live = b.tgt_in != PAD  # steps where a row still writes
        assert torch.allclose(probs.sum(-1)[live], torch.ones(int(live.sum())), atol=1e-4)
        for row, (word, *_rest) in enumerate(PAIRS):
            ids = sorted(set(m.vocab.encode(word)))
            assert probs[row][live[row]][:, ids].sum(-1).min() > 0.999
        # without context nothing is copied, whatever the gate says
        shut = m.init_decoder(post.mu, b.tgt_tense, post, torch.zeros(3))
        never_copying = m.decode(b.tgt_in, shut)
        m.copy_gate.bias.fill_(-30.0)
        assert torch.allclose(never_copying[live], m.decode(b.tgt_in, shut)[live], atol=1e-5)
        noise = m.decode(b.tgt_in, m.init_decoder(post.mu, b.tgt_tense))
        assert torch.allclose(noise.exp().sum(-1)[live], torch.ones(int(live.sum())), atol=1e-4)


def test_position_bias_lets_step_t_read_source_character_t():
    m = _model(attention=True, copy=True, position_bias=2)
    b = make_batch(PAIRS, m.vocab)
    post = m.encode(b.src, b.src_len, b.src_tense)
    with torch.no_grad():
        assert m.position_scores(4, 5).shape == (4, 5)
        assert float(m.position_scores(4, 5).abs().sum()) == 0.0  # content alone until trained
        m.position_bias.copy_(torch.tensor([0.0, 0.0, 60.0, 0.0, 0.0]))  # offset 0 only
        state = m.init_decoder(post.mu, b.tgt_tense, post)
        query = torch.randn(3, 16)
        for t in range(2):  # "walk", "go" and "abandoning" all have two letters
            _, weights = m._attend(query, state, state.position[t])
            assert (weights.argmax(-1) == t).all() and weights.max(-1).values.min() > 0.99
        # decode_step keeps count of its steps, so step t gets row t of the bias
        for t in range(3):
            assert state.step == t
            _, state = m.decode_step(b.tgt_in[:, t], state)
        # offsets past the table's reach share its end values
        far = m.position_scores(1, 9)[0]
        assert torch.equal(far[2:], torch.zeros(7)) and float(far[0]) == 60.0


class FakeModel:
    """Hand-written next-character probabilities over a 5-token vocabulary (ids 0-3 are
    specials, 4 is 'a', 5 is 'b'): greedy takes 'a' then must stop on a poor path, while the
    best whole sequence starts with the less likely 'b'."""

    def __init__(self):
        self.table = {
            (): [0, 0, 0.0, 0, 0.6, 0.4],
            (4,): [0, 0, 0.5, 0, 0.25, 0.25],
            (5,): [0, 0, 0.9, 0, 0.05, 0.05],
        }

    def step(self, tokens, state):
        prefixes = [tuple(h) for h in state.history]
        probs = torch.tensor([self.table.get(p, [0, 0, 1.0, 0, 0, 0]) for p in prefixes])
        logits = torch.log(probs.clamp_min(1e-12))
        return logits, state

    class State:
        def __init__(self, history):
            self.history = history

        def select(self, index):
            return FakeModel.State([list(self.history[i]) for i in index.tolist()])


def _run(fn, **kw):
    fake = FakeModel()
    state = FakeModel.State([[]])

    def step(tokens, st):
        # The fake keeps its own history of fed tokens (beyond the start token).
        for h, t in zip(st.history, tokens.tolist(), strict=True):
            if t not in (SOS, PAD, EOS):
                h.append(t)
        return fake.step(tokens, st)

    return fn(step, state, 1, 5, **kw)[0].tolist()


def test_greedy_and_beam_on_a_fake_model():
    # greedy: 'a' (0.6) then EOS (0.5) -> 0.30; beam: 'b' (0.4) then EOS (0.9) -> 0.36.
    assert _run(decoding.greedy) == [4, EOS]
    assert _run(decoding.beam, width=2) == [5, EOS]


def test_nbest_keeps_every_beam_with_its_log_probability():
    fake = FakeModel()

    def step(tokens, st):
        for h, t in zip(st.history, tokens.tolist(), strict=True):
            if t not in (SOS, PAD, EOS):
                h.append(t)
        return fake.step(tokens, st)

    history, scores = decoding.nbest(step, FakeModel.State([[]]), 1, 5, width=2)
    assert [row[:2] for row in history[0].tolist()] == [[5, EOS], [4, EOS]]
    assert torch.allclose(scores[0].exp(), torch.tensor([0.36, 0.30]))


def test_roundtrip_keeps_the_candidate_likeliest_forward_and_back():
    """convert(method="roundtrip") picks, among beam search's candidates, the highest sum
    of log p(candidate | word) and log p(word | candidate); both terms are recomputed here
    teacher-forced, and the forward one must equal the beam's own score."""
    from pipeline.artifacts import load_pretrained
    from pipeline.data import encode_sources, load_train, split_by_verb, test_words
    from pipeline.evaluate import convert, log_likelihood

    m = load_pretrained().eval()
    # the verbs held out of the shipped model's training, where the back term has most to do
    _, held = split_by_verb(load_train(), 0.1, 0, test_words())
    words = [*sorted({q[0] for q in held}), "symbolize", "chew", "interpret", "hunt", "go"]
    got = convert(m, words, "sp", "p", method="roundtrip", beam_width=4)
    with torch.no_grad():
        ids, lengths = encode_sources(words, m.vocab)
        post = m.encode(ids, lengths, torch.zeros(len(words), dtype=torch.long))
        state = m.init_decoder(post.mu, torch.full((len(words),), 3), post)
        history, beam_scores = decoding.nbest(m.decode_step, state, len(words), 30, width=4)
    for i, word in enumerate(words):
        candidates = [m.vocab.decode(row) for row in history[i].tolist()]
        forward = log_likelihood(m, [word] * 4, "sp", candidates, "p")
        assert torch.allclose(forward, beam_scores[i], atol=1e-3)
        back = log_likelihood(m, candidates, "p", [word] * 4, "sp")
        assert got[i] == candidates[int((forward + back).argmax())]
    # the back term mattered: some word's choice is not the beam's own best
    best = [
        m.vocab.decode(history[i, int(beam_scores[i].argmax())].tolist()) for i in range(len(words))
    ]
    assert got != best


def test_greedy_stops_at_max_length_and_pads_after_eos():
    m = _model()
    state = m.init_decoder(torch.zeros(3, 4), torch.tensor([0, 1, 2]))
    out = decoding.greedy(m.decode_step, state, 3, 7)
    assert out.shape[0] == 3 and out.shape[1] <= 7
    for row in out.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1 :])


def test_mmd_tells_the_prior_from_a_shifted_or_shrunk_cloud():
    g = torch.Generator().manual_seed(0)
    prior = torch.randn(256, 8, generator=g)
    same = torch.randn(256, 8, generator=g)
    shifted = torch.randn(256, 8, generator=g) + 1.0
    shrunk = 0.3 * torch.randn(256, 8, generator=g)
    near = mmd(same, prior).item()
    assert abs(near) < 0.02
    assert mmd(shifted, prior).item() > 10 * max(near, 1e-3)
    assert mmd(shrunk, prior).item() > 10 * max(near, 1e-3)


def test_hand_run_attending_step_is_the_lstm_it_takes_its_weights_from():
    m = _model(attention=True, bidirectional=True, decoder_input_z=True)
    b = make_batch(PAIRS, m.vocab)
    post = m.encode(b.src, b.src_len, b.src_tense)
    state = m.init_decoder(post.mu, b.tgt_tense, post)
    state = replace(state, feed=torch.randn(3, 16))  # a fed-back output that is not zero
    _, after = m.decode_step(b.tgt_in[:, 0], state)
    x = torch.cat([m.chars(b.tgt_in[:, 0]), state.cond, state.feed], dim=-1).unsqueeze(1)
    _, (h, c) = m.decoder(x, (state.h, state.c))
    assert torch.allclose(after.h, h, atol=1e-6) and torch.allclose(after.c, c, atol=1e-6)


def test_greedy_dropping_finished_rows_matches_decoding_each_row_alone():
    from pipeline.artifacts import load_pretrained
    from pipeline.evaluate import convert

    m = load_pretrained()
    words = ["go", "abandon", "internationalize", "be", "walk", "misunderstand", "sing", "x"]
    together = convert(m, words, "sp", "pg")  # sorted by length, finished rows dropped
    alone = [convert(m, [w], "sp", "pg")[0] for w in words]
    assert together == alone
    assert len({len(w) for w in together}) > 3  # rows did finish at different steps


@pytest.mark.parametrize(
    ("words", "kw", "error", "needle"),
    [
        ("walk", {}, TypeError, r"not one string: give \['walk'\]"),
        (["walk"], {"method": "sampled"}, ValueError, r"'sampled' \(greedy, beam, roundtrip\)"),
        (["walk"], {"method": "beam", "beam_width": 0}, ValueError, "1 or more, not 0"),
        (["walk"], {"method": "roundtrip", "beam_width": 2.5}, ValueError, "not 2.5"),
        (["walk"], {"method": "beam", "beam_width": True}, ValueError, "not True"),
    ],
)
def test_convert_refuses_what_it_cannot_decode_before_decoding(words, kw, error, needle):
    """A string for a list would be read as one-letter words; an unknown method or a beam
    width of 0 failed deep in decoding, if at all."""
    from pipeline.artifacts import load_pretrained
    from pipeline.evaluate import convert

    with pytest.raises(error, match=needle):
        convert(load_pretrained(), words, "sp", "p", **kw)


@pytest.mark.parametrize(
    ("n", "kw", "needle"),
    [
        (2.5, {}, "whole number n of 1 or more, not 2.5"),
        (0, {}, "not 0"),
        (2, {"method": "roundtrip"}, r"'roundtrip' \(greedy, beam\)"),
        (2, {"method": "beam", "beam_width": 0}, "1 or more, not 0"),
    ],
)
def test_generate_refuses_what_it_cannot_decode_before_decoding(n, kw, needle):
    from pipeline.artifacts import load_pretrained
    from pipeline.evaluate import generate

    with pytest.raises(ValueError, match=needle):
        generate(load_pretrained(), n, **kw)


def test_a_model_with_a_latent_memory_saves_and_loads_whole():
    import pytest

    import pipeline
    from pipeline.config import load_config

    m = _model(attention=True, decoder_input_z=True, latent_memory=9, latent_memory_size=5)
    back = pipeline.from_bytes(pipeline.to_bytes(m))
    assert back.config.latent_memory == 9
    assert torch.equal(back.memory_keys, m.memory_keys)
    words = ["walk", "sing", "abandon"]
    assert pipeline.convert(back, words, "sp", "p") == pipeline.convert(m, words, "sp", "p")
    with pytest.raises(pipeline.ConfigError, match="latent_memory"):
        load_config("tiny", ["model.latent_memory=-1"])
    with pytest.raises(pipeline.ConfigError, match="latent_memory_log_scale"):
        load_config("tiny", ["model.latent_memory_log_scale=nan"])


def test_the_memory_reads_sharper_from_a_higher_log_scale():
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    peaks = []
    for log_scale in (1.0, 4.0):
        m = _model(attention=True, latent_memory=16, latent_memory_log_scale=log_scale)
        assert m.memory_log_scale.item() == log_scale
        keys = m.memory_keys.detach()
        d2 = torch.cdist(z, keys) ** 2
        peaks.append(torch.softmax(-m.memory_log_scale.exp() * d2, -1).max(1).values.mean())
    assert peaks[1] > peaks[0]


def test_dropout_zeroes_its_share_and_keeps_the_mean():
    from pipeline.model import Dropout

    drop = Dropout(0.2)
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    zeroed = (y == 0).float().mean().item()
    assert abs(zeroed - 0.2) < 0.005  # 0.2 +- about 5 standard errors
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.8))
    assert abs(y.mean().item() - 1.0) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes where the value did
    assert drop.eval()(x) is x and Dropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        Dropout(1.0)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_keep_masks_keep_each_entry_alike_and_independently(p):
    from pipeline.model import keep_mask

    torch.manual_seed(0)
    n = 400_000
    keep = keep_mask((n // 4, 4), p)  # the four entries of each 64-bit draw side by side
    assert keep.shape == (n // 4, 4) and keep.dtype == torch.bool
    se = (p * (1 - p) / (n // 4)) ** 0.5
    for col in keep.float().unbind(1):  # no quarter of the draw, the top one included, is off
        assert abs((1 - col.mean().item()) - p) < 6 * se
    pairs = keep[:, 0] & keep[:, 3]  # quarters of one draw are independent of each other
    assert abs(pairs.float().mean().item() - (1 - p) ** 2) < 6 * se
    assert keep_mask((3, 5, 7), p).shape == (3, 5, 7)  # sizes that are no multiple of 4
    assert keep_mask((0, 8), p).numel() == 0


def test_decoding_from_noise_skips_attention_and_writes_the_same():
    """Without a posterior no row has a source, so decode_step skips the attention whose
    context it would multiply by 0: the same scores as weighing the blank source."""
    m = _model(attention=True, bidirectional=True, decoder_input_z=True, copy=True)
    z, tense = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    fast = m.init_decoder(z, tense)
    slow = replace(fast, attends=True)
    assert not fast.attends
    token = torch.full((5,), SOS)
    for _ in range(6):
        a, fast = m.decode_step(token, fast)
        b, slow = m.decode_step(token, slow)
        assert torch.allclose(a, b, atol=1e-6)
        token = a.argmax(-1)
    assert not fast.attends and slow.attends  # steps carry the flag


def test_out_of_training_the_cell_takes_tanh_by_the_sigmoid_and_lands_on_the_same_values():
    """Without gradients on the CPU, tanh is 2 sigmoid(2x) - 1 (in the LSTM cell and the
    attentional output): the same function, within float rounding; with gradients,
    torch.tanh itself, and the gradient flows."""
    gen = torch.Generator().manual_seed(0)
    gates, c = torch.randn(64, 4 * 16, generator=gen) * 4, torch.randn(64, 16, generator=gen)
    x = gates.clone().requires_grad_()
    h_ref, c_ref = lstm_cell(x, c)
    assert tanh(x).grad_fn is not None and torch.equal(tanh(x), torch.tanh(x))
    (h_ref.sum() + c_ref.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(tanh(gates), torch.tanh(gates), rtol=0, atol=1e-6)
        assert not torch.equal(tanh(gates), torch.tanh(gates))  # the other route, truly
        h, c_new = lstm_cell(gates.clone(), c)
    assert torch.allclose(h, h_ref.detach(), rtol=0, atol=1e-6)
    assert torch.allclose(c_new, c_ref.detach(), rtol=0, atol=1e-6)
    # bf16 keeps torch.tanh: its sigmoid near 1/2 would cost tanh's small values their digits
    small = torch.full((8,), 0.01, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(tanh(small), torch.tanh(small))


def test_attention_by_batched_products_equals_its_broadcast_form():
    """Conversion scores the source with batched products, training with broadcast ones
    (their backward is cheaper); both are the same attention, positions and mask included."""
    from pipeline.model import _keyed_attention

    g = torch.Generator().manual_seed(0)
    B, S, H = 5, 7, 16
    query, keys, values = (
        torch.randn(*shape, generator=g) for shape in [(B, H), (B, S, H), (B, S, H)]
    )
    mask = torch.arange(S) < torch.tensor([7, 3, 5, 1, 6]).unsqueeze(1)
    position = torch.randn(S, generator=g)
    share, weights = _keyed_attention(query, keys, values, mask, position, broadcast=False)
    want_w = torch.softmax(
        (torch.einsum("bsh,bh->bs", keys, query) + position).masked_fill(~mask, float("-inf")), -1
    )
    assert torch.allclose(weights, want_w, atol=1e-6)
    assert torch.allclose(share, torch.einsum("bs,bsh->bh", want_w, values), atol=1e-5)
    again = _keyed_attention(query, keys, values, mask, position, broadcast=True)
    assert torch.allclose(share, again[0], atol=1e-5) and torch.allclose(
        weights, again[1], atol=1e-6
    )
    assert (weights[~mask] == 0).all()
