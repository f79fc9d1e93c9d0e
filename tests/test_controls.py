"""Edit controls on the exact source branch (issue 19): two-branch edits, masks, Prompt-to-Prompt, mutual
self-attention, on the embedded scenes and digits models and a tiny SD 1.x pipeline.

Exactness is checked with diffusers' classic ``AttnProcessor`` where Prompt-to-Prompt recomputes a map: its
explicit probabilities are then the pipeline's own arithmetic, so an unchanged map gives the pipeline's output to
the bit. Under the default SDPA processor the same edits agree to float rounding (checked too).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from bdia.editing import Control, Editor, Mask, MutualSelfAttention, PromptToPrompt  # noqa: E402
from bdia.solvers.base import transition_coefficients  # noqa: E402
from pipelines_fixtures import make_image, model_dir  # noqa: E402

R = importlib.import_module("bdia.scenes.render")

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 6
EXACT = 1e-10


def classic(net):
    from diffusers.models.attention_processor import AttnProcessor

    net.set_attn_processor(AttnProcessor())


@pytest.fixture(scope="module")
def scenes():
    ed = Editor.from_pretrained("scenes", device="cpu", progress=False)
    originals = dict(ed.backend.unet.attn_processors)
    yield ed
    ed.backend.unet.set_attn_processor(originals)


@pytest.fixture(scope="module")
def pair():
    return R.held_out_edit_pairs(1, kinds=["colour"])[0]


@pytest.fixture(scope="module")
def inversions(scenes, pair):
    """Inversions of the pair's source under the classic processor (BDIA, EDICT, Rex, DDIM)."""
    classic(scenes.backend.unet)
    out = {}
    for method in ("bdia", "edict", "rex", "ddim"):
        inv = scenes.invert(pair.source_image, pair.source_caption, guidance_scale=3.0, num_steps=STEPS, method=method)
        out[method] = (inv, scenes.reconstruct(inv))
    return out


def controls_for(pair):
    common = "background"  # a word of every caption: the same controls serve the edit and the same-prompt run
    return [
        Control(),
        Mask(torch.rand(32, 32, generator=torch.Generator().manual_seed(0))),
        PromptToPrompt(),
        PromptToPrompt("refine", cross_steps=(0.2, 0.9), self_steps=0.5),
        PromptToPrompt(reweight={common: 1.0}, blend=(common, common)),  # a factor 1 keeps the maps
        MutualSelfAttention(start_step=2),
    ]


# ----- the source branch and the same-prompt edit are the reconstruction ------------------------------------
@pytest.mark.parametrize("method", ["bdia", "edict", "rex", "ddim"])
def test_source_branch_is_the_reconstruction_and_same_prompt_edits_give_it(scenes, pair, inversions, method):
    inv, rec = inversions[method]
    controls = controls_for(pair)
    if method in ("edict", "rex"):  # two or more evaluations a step: the controls that touch most, to save time
        controls = controls[1:2] + controls[4:]
    for control in controls:
        edited = scenes.edit(inv, pair.target_caption, control=control)
        assert (edited.info["source_latents"] - rec.latents).abs().max() < EXACT, control
        same = scenes.edit(inv, pair.source_caption, control=control)
        assert (same.latents - rec.latents).abs().max() < EXACT, control
        assert (same.info["source_latents"] - rec.latents).abs().max() < EXACT, control


def test_under_sdpa_the_source_branch_stays_exact_and_p2p_agrees_to_rounding(pair):
    ed = Editor.from_pretrained("scenes", device="cpu", progress=False)  # SDPA processors
    inv = ed.invert(pair.source_image, pair.source_caption, guidance_scale=3.0, num_steps=STEPS)
    rec = ed.reconstruct(inv)
    for control in (PromptToPrompt(), MutualSelfAttention(start_step=1)):
        edited = ed.edit(inv, pair.target_caption, control=control)
        assert (edited.info["source_latents"] - rec.latents).abs().max() == 0
        same = ed.edit(inv, pair.source_caption, control=control)
        assert (same.latents - rec.latents).abs().max() < 1e-3


def test_masks_zero_gives_the_reconstruction_one_gives_the_plain_edit(scenes, pair, inversions):
    for method in ("bdia", "edict"):
        inv, rec = inversions[method]
        plain = scenes.edit(inv, pair.target_caption)
        zero = scenes.edit(inv, pair.target_caption, mask=np.zeros((7, 9)))
        one = scenes.edit(inv, pair.target_caption, mask=torch.ones(64, 64))
        assert (zero.latents - rec.latents).abs().max() < EXACT
        assert (one.latents - plain.latents).abs().max() < EXACT
        assert (plain.latents - rec.latents).abs().max() > 1e-2  # the edit does change the image


class _Recorder(Control):
    """Checks, after every other control, that the target state equals the source state where ``keep``."""

    def __init__(self, keep: torch.Tensor):
        self.keep, self.steps = keep, []

    def after_step(self, step, state):
        b = self.context.batch
        for z in state:
            src, tgt = z[:b], z[b:]
            keep = self.keep.expand_as(src)
            assert torch.equal(src[keep], tgt[keep])
        self.steps.append(step)
        return state


@pytest.mark.parametrize("method", ["bdia", "edict"])
def test_outside_the_mask_the_whole_state_is_the_source_state_at_every_step(scenes, pair, inversions, method):
    inv, _ = inversions[method]
    m = torch.zeros(32, 32)
    m[8:24, 4:20] = 1.0  # a latent-grid-aligned box: exact 0 outside, exact 1 inside
    keep = (m == 0)[None, None]
    rec = _Recorder(keep)
    out = scenes.edit(inv, pair.target_caption, control=[PromptToPrompt(), Mask(m), rec])
    assert rec.steps == list(range(1 if method == "bdia" else 0, STEPS))
    src = out.info["source_latents"]
    assert torch.equal(out.latents[keep.expand_as(src)], src[keep.expand_as(src)])


def test_digits_take_masks_and_refuse_attention_controls():
    ed = Editor.from_pretrained("digits", device="cpu", progress=False)
    img = torch.zeros(1, 16, 16)
    img[0, 3:13, 6:10] = 1.0
    inv = ed.invert(img, "1", guidance_scale=2.0, num_steps=STEPS)
    rec = ed.reconstruct(inv)
    plain = ed.edit(inv, "7")
    assert (ed.edit(inv, "7", mask=torch.zeros(4, 4)).latents - rec.latents).abs().max() < EXACT
    assert (ed.edit(inv, "7", mask=torch.ones(16, 16)).latents - plain.latents).abs().max() < EXACT
    half = torch.zeros(16, 16)
    half[:, :8] = 1
    out = ed.edit(inv, "7", mask=half)
    assert torch.equal(out.latents[..., 8:], rec.latents[..., 8:])
    for control in (PromptToPrompt(), MutualSelfAttention()):
        with pytest.raises(ValueError, match="attention layers and the embedded digits model has none"):
            ed.edit(inv, "7", control=control)


def test_mask_inputs_and_errors(tmp_path, scenes, pair, inversions):
    from PIL import Image

    inv, rec = inversions["bdia"]
    path = tmp_path / "m.png"
    Image.fromarray(np.zeros((50, 70), dtype=np.uint8)).save(path)
    assert (scenes.edit(inv, pair.target_caption, mask=str(path)).latents - rec.latents).abs().max() < EXACT
    assert (scenes.edit(inv, pair.target_caption, mask=Image.open(path)).latents - rec.latents).abs().max() < EXACT
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        Mask(torch.full((4, 4), 2.0))
    with pytest.raises(FileNotFoundError, match="no mask file"):
        Mask(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="2 masks for 1 images"):
        scenes.edit(inv, pair.target_caption, mask=torch.zeros(2, 8, 8))
    with pytest.raises(TypeError, match="control must be"):
        scenes.edit(inv, pair.target_caption, control="p2p")
    with pytest.raises(ValueError, match="one attention control at a time"):
        scenes.edit(inv, pair.target_caption, control=[PromptToPrompt(), MutualSelfAttention()])


# ----- windows, processors, dtypes ---------------------------------------------------------------------------
def test_step_windows_inject_exactly_where_configured(scenes, pair, inversions):
    inv, _ = inversions["ddim"]  # DDIM edits make every step 0..N-1
    net = scenes.backend.unet
    cross = [n for n in net.attn_processors if ".attn2." in n]
    small_self = [
        n for n in net.attn_processors if ".attn1." in n and ("down_blocks.2" in n or "mid" in n or "up_blocks.0" in n)
    ]
    p2p = PromptToPrompt(cross_steps=0.5, self_steps=(0.2, 0.7))
    scenes.edit(inv, pair.target_caption, control=p2p)
    by_step: dict[int, set] = {}
    for step, name in p2p.applied:
        by_step.setdefault(step, set()).add(name)
    # cross: int(0.5 (N + 1)) = 3 -> steps 0, 1, 2; self at 8x8 (blend grid 32/4): int(0.2 N) = 1 .. int(0.7 N) = 4
    for step in range(STEPS):
        want = set(cross) if step < 3 else set()
        if 1 <= step < 4:
            want |= set(small_self)
        assert by_step.get(step, set()) == want, step
    assert len(p2p.applied) == sum(len(v) for v in by_step.values())  # once per step and layer

    masa = MutualSelfAttention(start_step=2, start_layer=3)
    scenes.edit(inv, pair.target_caption, control=masa)
    from bdia.editing.controls.base import network_layers

    late = {ly.name for ly in network_layers(net) if not ly.cross and ly.self_index >= 3}
    assert sorted({s for s, _ in masa.applied}) == list(range(2, STEPS))
    assert all({n for s, n in masa.applied if s == step} == late for step in range(2, STEPS))
    assert len(masa.applied) == len(late) * (STEPS - 2)


class _Boom(Control):
    def after_step(self, step, state):
        raise RuntimeError("boom")


def test_processors_restored_after_edits_and_errors(scenes, pair, inversions):
    inv, rec = inversions["bdia"]
    net = scenes.backend.unet
    before = dict(net.attn_processors)
    scenes.edit(inv, pair.target_caption, control=PromptToPrompt(blend=pair.changed_words))
    assert all(net.attn_processors[k] is v for k, v in before.items())
    with pytest.raises(RuntimeError, match="boom"):
        scenes.edit(inv, pair.target_caption, control=[MutualSelfAttention(start_step=0), _Boom()])
    assert all(net.attn_processors[k] is v for k, v in before.items())
    assert (scenes.reconstruct(inv).latents - rec.latents).abs().max() == 0  # the pipeline computes as before


def test_float16_network(pair):
    ed = Editor.from_pretrained("scenes", device="cpu", torch_dtype=torch.float16, progress=False)
    inv = ed.invert(pair.source_image, pair.source_caption, guidance_scale=3.0, num_steps=4)
    rec = ed.reconstruct(inv)
    for control in (PromptToPrompt(blend=pair.changed_words), MutualSelfAttention(start_step=1), Mask(np.ones((3, 3)))):
        out = ed.edit(inv, pair.target_caption, control=control)
        assert torch.isfinite(out.latents).all()
        assert (out.info["source_latents"] - rec.latents).abs().max() == 0


def test_batched_branches_match_sequential_to_rounding(scenes, pair, inversions):
    inv, rec = inversions["bdia"]
    for control in (Control(), PromptToPrompt(blend=pair.changed_words), MutualSelfAttention(start_step=1)):
        seq = scenes.edit(inv, pair.target_caption, control=control)
        bat = scenes.edit(inv, pair.target_caption, control=control, branches="batched")
        # matrix kernels give other roundings for another batch size: agreement to rounding, not to the bit
        assert (bat.info["source_latents"] - rec.latents).abs().max() < 1e-3
        assert (bat.latents - seq.latents).abs().max() < 1e-2
    with pytest.raises(ValueError, match="branches must be one of"):
        scenes.edit(inv, pair.target_caption, control=Control(), branches="parallel")


def test_bad_control_settings_are_refused():
    with pytest.raises(ValueError, match="mode must be one of"):
        PromptToPrompt("swap")
    with pytest.raises(ValueError, match="cross_steps must be a fraction"):
        PromptToPrompt(cross_steps=1.5)
    with pytest.raises(ValueError, match="reweight factor"):
        PromptToPrompt(reweight={"cat": -1})
    with pytest.raises(ValueError, match="start_step must be"):
        MutualSelfAttention(start_step=-1)


# ----- Prompt-to-Prompt against an independent transcription of the reference rules ---------------------------
# What follows re-states the reference code's rules (Hertz et al.'s prompt-to-prompt, as diffusers' community
# Prompt2PromptPipeline mirrors it) in the reference's own shape: a controller called on every attention map of
# the guided batch [uncond source, uncond target, cond source, cond target], editing the conditional half in
# place, storing the maps, and LocalBlend on the latents after each DDIM step.
def ref_word_inds(text, place, tok):
    split = text.split(" ")
    if isinstance(place, str):
        place = [i for i, w in enumerate(split) if w == place]
    else:
        place = [place]
    out = []
    if place:
        enc = [tok.decode([t]).strip("#") for t in tok.encode(text)][1:-1]
        cur, ptr = 0, 0
        for i in range(len(enc)):
            cur += len(enc[i])
            if ptr in place:
                out.append(i + 1)
            if cur >= len(split[ptr]):
                ptr += 1
                cur = 0
    return np.array(out, dtype=np.int64)


def ref_replacement(x, y, tok, n=77):
    wx, wy = x.split(" "), y.split(" ")
    inds = [i for i in range(len(wy)) if wy[i] != wx[i]]
    src = [ref_word_inds(x, i, tok) for i in inds]
    tgt = [ref_word_inds(y, i, tok) for i in inds]
    mapper = np.zeros((n, n))
    i = j = cur = 0
    while i < n and j < n:
        if cur < len(src) and src[cur][0] == i:
            s, t = src[cur], tgt[cur]
            if len(s) == len(t):
                mapper[s, t] = 1
            else:
                for tt in t:
                    mapper[s, tt] = 1 / len(t)
            cur += 1
            i += len(s)
            j += len(t)
        elif cur < len(src):
            mapper[i, j] = 1
            i += 1
            j += 1
        else:
            mapper[j, j] = 1
            i += 1
            j += 1
    return torch.from_numpy(mapper).float()[None]


def ref_refinement(x, y, tok, n=77):
    xs, ys = tok.encode(x), tok.encode(y)
    score = np.zeros((len(xs) + 1, len(ys) + 1), dtype=np.int32)
    trace = np.zeros_like(score)
    trace[0, 1:], trace[1:, 0], trace[0, 0] = 1, 2, 4
    for i in range(1, len(xs) + 1):
        for j in range(1, len(ys) + 1):
            left, up = score[i, j - 1], score[i - 1, j]
            diag = score[i - 1, j - 1] + (1 if xs[i - 1] == ys[j - 1] else -1)
            score[i, j] = max(left, up, diag)
            trace[i, j] = 1 if score[i, j] == left else 2 if score[i, j] == up else 3
    i, j, pairs = len(xs), len(ys), []
    while i > 0 or j > 0:
        if trace[i, j] == 3:
            i, j = i - 1, j - 1
            pairs.append((j, i))
        elif trace[i, j] == 1:
            j -= 1
            pairs.append((j, -1))
        elif trace[i, j] == 2:
            i -= 1
        else:
            break
    base = torch.tensor(pairs[::-1], dtype=torch.int64)
    alphas = torch.ones(n)
    alphas[: base.shape[0]] = base[:, 1].ne(-1).float()
    mapper = torch.zeros(n, dtype=torch.int64)
    mapper[: base.shape[0]] = base[:, 1]
    mapper[base.shape[0] :] = len(ys) + torch.arange(n - len(ys))
    return mapper[None], alphas.reshape(1, 1, 1, n)


class RefController:
    def __init__(self, prompts, tok, n_steps, cross, self_, mode, reweight, blend, res, n_layers, th=0.3):
        self.prompts, self.res, self.n_layers, self.th = prompts, res, n_layers, th
        self.cur_step = self.cur_layer = 0
        lo, hi = (0.0, cross) if isinstance(cross, float) else cross
        alpha = torch.zeros(n_steps + 1, 1, 77)
        alpha[int(lo * (n_steps + 1)) : int(hi * (n_steps + 1))] = 1
        self.cross_alpha = alpha.reshape(n_steps + 1, 1, 1, 1, 77)
        lo, hi = (0.0, self_) if isinstance(self_, float) else self_
        self.self_range = int(lo * n_steps), int(hi * n_steps)
        self.mode = mode
        if mode == "replace":
            self.mapper = ref_replacement(prompts[0], prompts[1], tok)
        elif mode == "refine":
            self.mapper, self.alphas = ref_refinement(prompts[0], prompts[1], tok)
        self.equalizer = None
        if reweight:
            eq = torch.ones(1, 77)
            for word, value in reweight.items():
                eq[:, ref_word_inds(prompts[1], word, tok)] = value
            self.equalizer = eq
        self.blend = None
        if blend is not None:
            layers = torch.zeros(2, 1, 1, 1, 1, 77)
            for k, words in enumerate(blend):
                for w in [words] if isinstance(words, str) else words:
                    layers[k, :, :, :, :, ref_word_inds(prompts[k], w, tok)] = 1
            self.blend = layers
        self.step_store = self.empty()
        self.attention_store = {}

    @staticmethod
    def empty():
        return {f"{p}_{k}": [] for p in ("down", "mid", "up") for k in ("cross", "self")}

    def edit_cross(self, base, rep):
        if self.mode == "replace":
            new = torch.einsum("hpw,bwn->bhpn", base, self.mapper)
        elif self.mode == "refine":
            new = base[:, :, self.mapper].permute(2, 0, 1, 3)
            new = new * self.alphas + rep * (1 - self.alphas)
        else:
            new = base[None]
        if self.equalizer is not None:
            new = new * self.equalizer[:, None, None, :]
        return new

    def forward(self, attn, is_cross, place):
        key = f"{place}_{'cross' if is_cross else 'self'}"
        if attn.shape[1] <= 32**2:
            self.step_store[key].append(attn)
        if is_cross or self.self_range[0] <= self.cur_step < self.self_range[1]:
            h = attn.shape[0] // 2
            a = attn.reshape(2, h, *attn.shape[1:])
            base, rep = a[0], a[1:]
            if is_cross:
                alpha = self.cross_alpha[self.cur_step]
                a[1:] = self.edit_cross(base, rep) * alpha + (1 - alpha) * rep
            elif rep.shape[2] <= self.res[0] * self.res[1]:
                a[1:] = base.unsqueeze(0).expand(rep.shape[0], *base.shape)
        return attn

    def __call__(self, attn, is_cross, place):
        h = attn.shape[0]
        attn[h // 2 :] = self.forward(attn[h // 2 :], is_cross, place)
        self.cur_layer += 1
        if self.cur_layer == self.n_layers:
            self.cur_layer = 0
            self.cur_step += 1
            if not self.attention_store:
                self.attention_store = self.step_store
            else:
                for key in self.attention_store:
                    for i in range(len(self.attention_store[key])):
                        self.attention_store[key][i] += self.step_store[key][i]
            self.step_store = self.empty()
        return attn

    def local_blend(self, x_t):
        if self.blend is None:
            return x_t
        store = self.attention_store
        tokens = self.res[0] * self.res[1]
        maps = [m for m in store["down_cross"] + store["mid_cross"] + store["up_cross"] if m.shape[1] == tokens]
        maps = torch.cat([m.reshape(2, -1, 1, *self.res, 77) for m in maps], dim=1)
        maps = (maps * self.blend).sum(-1).mean(1)
        mask = F.max_pool2d(maps, (3, 3), (1, 1), padding=(1, 1))
        mask = F.interpolate(mask, size=x_t.shape[2:])
        mask = mask / mask.max(2, keepdims=True)[0].max(3, keepdims=True)[0]
        mask = mask.gt(self.th)
        mask = (mask[:1] + mask[1:]).float()
        return x_t[:1] + mask * (x_t - x_t[:1])


class RefProcessor:
    """diffusers' classic attention arithmetic with the controller called on the probabilities."""

    def __init__(self, controller, place):
        self.controller, self.place = controller, place

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        is_cross = encoder_hidden_states is not None
        residual = hidden_states
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key, value = attn.to_k(context), attn.to_v(context)
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
        probs = attn.get_attention_scores(query, key, None)
        probs = self.controller(probs, is_cross, self.place)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def reference_edit(ed, inv, prompts, scale, **settings):
    """DDIM from the inverted latents under the reference controller: both prompts in one guided batch."""
    unet = ed.backend.pipe.unet
    grid = ed.check(inv)
    n = grid.num_steps
    names = list(unet.attn_processors)
    latent = inv.inversion.latents[0]
    ctrl = RefController(prompts, ed.backend.pipe.tokenizer, n, n_layers=len(names), **settings)
    originals = dict(unet.attn_processors)
    unet.set_attn_processor({k: RefProcessor(ctrl, k.split("_")[0].replace("block", "")) for k in names})
    try:
        cond, uncond = ed.backend.conditions(list(prompts), None, *inv.image_size[::-1])
        states = torch.cat([uncond["encoder_hidden_states"], cond["encoder_hidden_states"]])
        x = torch.cat([latent, latent])
        with torch.no_grad():
            for i in range(n):
                t = grid.timesteps[i].expand(4)
                out = unet(torch.cat([x, x]).float(), t, encoder_hidden_states=states, return_dict=False)[0].float()
                e_u, e_c = out.chunk(2)
                eps = (e_u + scale * (e_c - e_u)).to(x.dtype)
                a, b = transition_coefficients(grid, i, i + 1)
                x = a * x + b * eps
                x = ctrl.local_blend(x)
    finally:
        unet.set_attn_processor(originals)
    return x[1:]


P2P_CASES = [
    ("a cat sat", "a dog sat", dict(mode="replace"), None),
    ("a cat sat", "a dog sat", dict(mode="replace"), ("cat", "dog")),
    ("a cat", "a big cat", dict(mode="refine"), None),
    ("a cat", "a big cat", dict(mode="refine"), ("cat", "cat")),
    ("a cat sat", "a cat sat", dict(mode="none", reweight={"cat": 3.0}), None),
    ("a cat sat", "a cat sat", dict(mode="none", reweight={"cat": 3.0}), ("cat", "cat")),
    ("a cat sat", "a dog sat", dict(mode="replace", reweight={"dog": 0.5}), ("cat", "dog")),
]


BLEND_THRESHOLD = 0.95  # random weights attend almost uniformly: 0.3 (the default) keeps the whole grid


@pytest.fixture(scope="module")
def tiny_sd():
    ed = Editor.from_pretrained(model_dir("sd"), device="cpu", progress=False)
    classic(ed.backend.pipe.unet)
    return ed


@pytest.mark.parametrize("source,target,settings,blend", P2P_CASES)
def test_p2p_matches_a_transcription_of_the_reference(tiny_sd, source, target, settings, blend):
    ed = tiny_sd
    inv = ed.invert(make_image((32, 32)), source, guidance_scale=5.0, num_steps=STEPS, method="ddim")
    cross, self_ = 0.6, (0.2, 0.7)
    ref_mode = settings["mode"] if settings["mode"] != "none" else None
    ref = reference_edit(
        ed,
        inv,
        (source, target),
        5.0,
        cross=cross,
        self_=self_,
        mode=ref_mode,
        reweight=settings.get("reweight"),
        blend=blend,
        res=(8, 8),  # the tiny UNet attends at 8x8 only (its latent/4 = 4x4 has no attention layer)
        th=BLEND_THRESHOLD,
    )
    control = PromptToPrompt(
        settings["mode"],
        cross_steps=cross,
        self_steps=self_,
        reweight=settings.get("reweight"),
        blend=blend,
        blend_threshold=BLEND_THRESHOLD,
    )
    for branches, tol in (("batched", 1e-5), ("sequential", 1e-4)):
        out = ed.edit(inv, target, guidance_scale=5.0, control=control, branches=branches)
        err = float((out.latents - ref).abs().max())
        assert err < tol, (branches, err)
    plain = ed.edit(inv, target, guidance_scale=5.0, control=Control())
    assert (plain.latents - ref).abs().max() > 1e-2  # the control does change the edit
    if blend is not None:  # LocalBlend kept part of the source: its last mask is neither empty nor full
        kept = (out.latents == out.info["source_latents"]).all(dim=1)
        assert 0 < kept.double().mean() < 1
        mask = control.last_blend_mask  # the last step's mask: where it is 0 the edit is the source exactly
        assert mask is not None and mask.shape == (kept.shape[0], 1, *kept.shape[1:])
        assert 0 < float(mask.mean()) < 1 and bool(kept[mask[:, 0] == 0].all())
    else:
        assert control.last_blend_mask is None


# ----- the command line ------------------------------------------------------------------------------------------
def test_cli_edit_with_a_mask_and_control_errors(bdia_cli, tmp_path, digit_png):
    from PIL import Image

    inv = tmp_path / "three.safetensors"
    assert bdia_cli("invert", digit_png, "--prompt", "3", "--steps", 6, "--guidance", 2, "-o", inv, "-q")[0] == 0
    assert bdia_cli("reconstruct", inv, "-o", tmp_path / "rec.png", "-q")[0] == 0
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(tmp_path / "keep.png")
    code, out, err = bdia_cli("edit", inv, "--prompt", "8", "--mask", tmp_path / "keep.png", "-o", tmp_path / "e.png")
    assert code == 0 and "controls Mask" in out, err
    with Image.open(tmp_path / "e.png") as a, Image.open(tmp_path / "rec.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # an all-black mask keeps the reconstruction
    bad = [
        (("--control", "p2p"), "attention layers and the embedded digits model has none"),
        (("--cross-steps", "0.5"), "--cross-steps apply to --control p2p"),
        (("--control", "masactrl", "--blend", "3,8"), "--blend apply to --control p2p"),
        (("--control", "p2p", "--cross-steps", "1.5"), "a step window is a fraction"),
        (("--control", "p2p", "--reweight", "smiling"), "--reweight takes WORD=FACTOR"),
        (("--control", "p2p", "--blend", "cat"), '--blend takes "SOURCE_WORDS,TARGET_WORDS"'),
        (("--mask", tmp_path / "missing.png"), "no mask file"),
        (("--branches", "batched"), "--branches applies to a two-branch edit"),
        (("--control", "shared"), "the shared values control acts on attention layers"),
        (("--shared-steps", "3"), "--shared-steps apply to --control shared"),
        (("--control", "shared", "--shared-layers", "a-b"), "layers are indices"),
    ]
    for flags, message in bad:
        code, out, err = bdia_cli("edit", inv, "--prompt", "8", *flags, "-o", tmp_path / "x.png", "-q")
        assert code == 2 and message in err, (flags, err)
        assert len(err.strip().splitlines()) <= 2, err  # one line (argparse adds its usage line)


def test_cli_edit_help_explains_every_control_flag(bdia_cli):
    code, out, _ = bdia_cli("edit", "--help")
    assert code == 0
    for flag in (
        "--control",
        "--mode",
        "--cross-steps",
        "--self-steps",
        "--blend",
        "--blend-threshold",
        "--reweight",
        "--masa-step",
        "--masa-layer",
        "--shared-steps",
        "--shared-layers",
        "--mask",
        "--branches",
    ):
        assert flag in out, flag


# ----- shared values on the flow transformers (SD3, Flux) ------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_shared_values_on_flow_transformers(kind):
    from bdia.editing import SharedValues
    from flow_fixtures import flow_model_dir

    ed = Editor.from_pretrained(flow_model_dir(kind), device="cpu", progress=False)
    net = ed.backend.pipe.transformer
    before = dict(net.attn_processors)
    inv = ed.invert(
        make_image(ed.backend.default_size), "a cat", guidance_scale=2.0 if kind == "sd3" else 1.0, num_steps=5
    )
    rec = ed.reconstruct(inv)
    plain = ed.edit(inv, "a dog")
    shared = SharedValues(steps=3, layers=[0, 1])
    out = ed.edit(inv, "a dog", control=shared)
    assert (out.info["source_latents"] - rec.latents).abs().max() == 0
    assert (out.latents - plain.latents).abs().max() > 1e-5  # the source's values do change the edit
    names = list(net.attn_processors)
    assert shared.applied == [(step, name) for step in (1, 2) for name in names]  # BDIA edits start at step 1
    same = ed.edit(inv, "a cat", control=SharedValues(steps=5))
    assert (same.latents - rec.latents).abs().max() < EXACT
    assert all(net.attn_processors[k] is v for k, v in before.items())
    for control in (PromptToPrompt(), MutualSelfAttention()):
        with pytest.raises(ValueError, match="needs a UNet"):
            ed.edit(inv, "a dog", control=control)
    with pytest.raises(ValueError, match="go past the network's 2 attention layers"):
        ed.edit(inv, "a dog", control=SharedValues(layers=[5]))
    zero = ed.edit(inv, "a dog", mask=torch.zeros(8, 8))  # masks work on packed (Flux) and spatial (SD3) latents
    assert (zero.latents - rec.latents).abs().max() < EXACT


def test_shared_values_refused_on_unets(scenes, pair, inversions):
    from bdia.editing import SharedValues

    with pytest.raises(ValueError, match="joint attention of SD3 and Flux"):
        scenes.edit(inversions["bdia"][0], pair.target_caption, control=SharedValues())


@pytest.mark.parametrize("kind", ["sd", "sd-v", "sdxl"])
def test_stable_diffusion_families(kind):
    ed = Editor.from_pretrained(model_dir(kind), device="cpu", progress=False)
    net = ed.backend.pipe.unet
    classic(net)
    inv = ed.invert(make_image((32, 32)), "a cat sat", guidance_scale=4.0, num_steps=STEPS)
    rec = ed.reconstruct(inv)
    plain = ed.edit(inv, "a dog sat")
    before = dict(net.attn_processors)
    for control in (PromptToPrompt(blend=("cat", "dog")), PromptToPrompt("refine"), MutualSelfAttention(start_step=1)):
        out = ed.edit(inv, "a dog sat", control=control)
        assert (out.info["source_latents"] - rec.latents).abs().max() < EXACT
        assert (out.latents - plain.latents).abs().max() > 1e-4
        same_control = PromptToPrompt(blend=("cat", "cat")) if getattr(control, "blend", None) else control
        assert (ed.edit(inv, "a cat sat", control=same_control).latents - rec.latents).abs().max() < EXACT
        assert all(net.attn_processors[k] is v for k, v in before.items())
    zero = ed.edit(inv, "a dog sat", mask=torch.zeros(32, 32))
    assert (zero.latents - rec.latents).abs().max() < EXACT
