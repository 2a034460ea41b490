"""Train a smalldetail checkpoint, one script for every family: a tiny model of the real
transformers class (LLaVA, Qwen2-VL, InstructBLIP or LLaVA-NeXT; what differs between them lives in
collab_eval.lab.smalldetail_families) on the synthetic small-detail benchmark
(collab_eval.lab.smalldetail), on the CPU, reproducibly.

    python -m collab_eval.lab.train_smalldetail --family llava --out collab_eval/weights/smalldetail-llava
    python -m collab_eval.lab.train_smalldetail --family llava-next --out collab_eval/weights/smalldetail-llava-next

On the CPU (2 threads, deterministic algorithms) the same seed gives the same weights.
``--device cuda`` runs too, without that promise.

Every training image is made by the edge functions the pipeline uses: the global view is
``collab_eval.edge.transmit`` of the family adapter's own framing of the whole image; a local
view is ``transmit`` of the framing of a square box built by ``collab_eval.roi.square_box``
(side 1-2x the input side in original pixels, as the RoI search makes them). Prompts are the
task prompts as lmms-eval renders them (its own doc_to_text functions), put through the
family's prompt format, with one image (stage 1) or two (stage 2: global then local).

The mixture, per step:
- one-image batch: reading and existence questions on the global view, and the generic
  description prompt (collab_eval.server_contract.GENERIC_PROMPT; no answer, attention loss only);
- two-image batch: reading and existence questions on [global, local], where the local crop
  contains the digit (80%) or is deliberately elsewhere (20%).

Extra supervision (stated plainly; a proxy for what pretraining gives real VLMs):
- attention: on one-image examples an auxiliary loss pulls the family's patch map (the one
  its adapter reads: the last prompt token's head-averaged attention at the adapter's layer,
  for InstructBLIP pushed through the Q-Former's cross-attention) toward the sign's patches
  for questions, and toward a flat map for the generic prompt;
- the digit in the image: an auxiliary head (not saved) reads the digit from the projected
  image features of correct local crops and of global views where it is readable (>= 10 px);
  InstructBLIP has two, on its vision tower's patches and on its projected query outputs;
- the existence question's two halves: on question rows, auxiliary heads (not saved) read,
  from the language model's hidden state of the last prompt token halfway up, the digit the
  question asks about (existence questions) and the digit in the image (where it is visible):
  one head for both where the family shares it (Family.shared_prompt_digit), else one each.
  Without them the language model never learned to compare the two: the first checkpoint
  answered "no" to every existence question.
- what cannot be known: where the digit is visible neither in the global view (under 10 px)
  nor in a correct crop, the first answer token is trained toward the uniform distribution
  over the task's answers (10 digits, or yes/no) instead of the true answer, which the image
  does not show. Without it the model memorised training scenes and was confidently wrong on
  new unreadable ones: the existence task's stage-1 score then told errors apart poorly
  (AUROC 0.73) and the gate beat random retransmission by only 2.7 points.

Curriculum (adaptive): local crops start with a window of 0.4x the input side (the sign fills
the view) and the largest allowed window grows through 0.7, 1.0, 1.5 to 2x the input side
whenever two-image reading accuracy on the running batches exceeds 0.5; wrong local crops
enter after the first level; the last 40% of the steps use every level.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from collab_eval.edge import Codec, transmit
from collab_eval.lab import smalldetail as sd
from collab_eval.lab.smalldetail_families import INPUT_SIDE, Family, recipes
from collab_eval.roi import square_box
from collab_eval.server_contract import GENERIC_PROMPT

POST_PROMPT = "\nAnswer the question using a single word or phrase."
DIGITS = "0123456789"
CORPUS = [
    "USER: ASSISTANT: " + sd.READ_QUESTION.capitalize() + POST_PROMPT,
    *[sd.EXIST_QUESTION.format(digit=d) + POST_PROMPT for d in DIGITS],
    GENERIC_PROMPT, *[" yes no " + " ".join(DIGITS)] * 20,
    *["yes\nno\n"] * 20,  # answers right after a newline (Qwen2-VL's "assistant\n") are one token too
]
CODEC = Codec("png")


def build_family(name: str) -> Family:
    return recipes()[name](CORPUS)


# ----- views, made with the pipeline's own edge functions ---------------------------
def box_target(box, region, grid) -> np.ndarray:
    """The box's overlap with each cell of ``region``'s (rows, columns) grid, summing to 1."""
    x0, y0, x1, y1 = region
    rows, cols = grid
    cw, ch = (x1 - x0) / cols, (y1 - y0) / rows
    t = np.zeros((rows, cols))
    for j in range(rows):
        for i in range(cols):
            ox = max(0.0, min(box[2], x0 + (i + 1) * cw) - max(box[0], x0 + i * cw))
            oy = max(0.0, min(box[3], y0 + (j + 1) * ch) - max(box[1], y0 + j * ch))
            t[j, i] = ox * oy
    return (t / t.sum() if t.sum() > 0 else np.full(grid, 1 / (rows * cols))).flatten()


def local_box(rng: random.Random, sc: sd.Scene, ratio: float, good: bool):
    """A square box of side ratio * input side (original pixels), holding the digit or not."""
    w, h = sc.image.size
    side = INPUT_SIDE * ratio
    x0, y0, x1, y1 = sc.target_box
    for _ in range(50):
        if good:
            cx = rng.uniform(x1 - side / 2, x0 + side / 2)
            cy = rng.uniform(y1 - side / 2, y0 + side / 2)
        else:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        box = square_box(cx, cy, side, (w, h))
        inside = box[0] <= x0 and box[1] <= y0 and box[2] >= x1 and box[3] >= y1
        sx0, sy0, sx1, sy1 = sc.sign_box
        touches = not (box[2] <= sx0 or box[0] >= sx1 or box[3] <= sy0 or box[1] >= sy1)
        if (good and inside) or (not good and not touches):
            return box
    return None


ZOOM_RATIOS = (0.4, 0.7, 1.0, 1.5, 2.0)  # curriculum: window side / input side, digit largest first
READABLE_PX = 10  # a digit at least this tall in the global view gets the digit heads there too


def make_data(family: Family, split: str, n: int, seed: int, ratios=ZOOM_RATIOS) -> dict:
    """Per scene: global view, attention target, and local views at the curriculum's zoom
    levels (the last ones are the RoI's sizes, 1-2x the input side), plus one deliberately
    wrong local view; as the family's processor makes them."""
    rng = random.Random(seed)
    glob, regions, digits, readable, loc, wrong, scenes = [], [], [], [], [], [], []
    for sc in sd.scenes(split, n):
        region, size = family.frame((0.0, 0.0, float(sc.image.size[0]), float(sc.image.size[1])))
        glob.append(transmit(sc.image, region, size, CODEC).image)
        regions.append(region)
        scenes.append(sc)
        digits.append(DIGITS.index(sc.digit))
        readable.append((sc.target_box[3] - sc.target_box[1]) * size[1] / (region[3] - region[1]) >= READABLE_PX)
        views = []
        for r in ratios:
            box = local_box(rng, sc, float(r) * rng.uniform(0.97, 1.0), good=True)
            if box is None:  # the digit is wider than the window: centre a window just large enough on it
                x0, y0, x1, y1 = sc.target_box
                box = square_box((x0 + x1) / 2, (y0 + y1) / 2, max(INPUT_SIDE * r, x1 - x0 + 2, y1 - y0 + 2),
                                 sc.image.size)
            views.append(transmit(sc.image, *family.frame(box), CODEC).image)
        loc.append(family.pixels(views))
        box = local_box(rng, sc, rng.uniform(1.0, 2.0), good=False)
        box = box or square_box(0, 0, INPUT_SIDE, sc.image.size)
        wrong.append(transmit(sc.image, *family.frame(box), CODEC).image)
    glob = family.pixels(glob)
    targets = [torch.tensor(box_target(sc.sign_box, region, family.grid(px)), dtype=torch.float32)
               for sc, region, px in zip(scenes, regions, glob)]
    return {"global": glob, "local": loc, "wrong": family.pixels(wrong), "target": targets,
            "digit": torch.tensor(digits), "readable": torch.tensor(readable)}


class Prompts:
    """The task prompts as lmms-eval renders them, and the answers' token ids."""

    def __init__(self, family: Family):
        from lmms_eval.tasks.pope.utils import pope_doc_to_text
        from lmms_eval.tasks.textvqa.utils import textvqa_doc_to_text
        kwargs = {"pre_prompt": "", "post_prompt": POST_PROMPT, "ocr": False}
        self.read = textvqa_doc_to_text({"question": sd.READ_QUESTION, "ocr_tokens": []}, kwargs)
        self.exist = {d: pope_doc_to_text({"question": sd.EXIST_QUESTION.format(digit=d)}, kwargs) for d in DIGITS}
        self.answer_ids = {a: family.answer_ids(a) for a in [*DIGITS, "yes", "no"]}
        # Every answer is one token, then EOS: its first token decides it.
        assert all(len(v) == 2 for v in self.answer_ids.values()), self.answer_ids


def first_answer_logits(logits, labels):
    """Logits that predict each row's first answer token, and that token."""
    pos = (labels != -100).float().argmax(1)
    has = (labels != -100).any(1)
    rows = torch.arange(len(labels), device=labels.device)
    return logits[rows, pos - 1][has], labels[rows, pos][has]


def last_hidden(output, batch, depth: int) -> torch.Tensor:
    """Each row's hidden state of the last prompt token after ``depth`` layers."""
    hidden = output.hidden_states[depth]
    return hidden[torch.arange(len(batch.last), device=hidden.device), batch.last]


class Heads(torch.nn.Module):
    """The auxiliary heads (training only, not saved)."""

    def __init__(self, width: int, places: int, shared_prompt_digit: bool):
        super().__init__()
        # One per place the family's image features are read (Family.digit_places), from pooled features.
        self.image_digit = torch.nn.ModuleList([torch.nn.Linear(width, len(DIGITS)) for _ in range(places)])
        # From the last prompt token, halfway up: the digit seen and the digit asked. Shared
        # (Family.shared_prompt_digit), both are coded in one basis and "yes" is whether the two
        # agree; with a head each the top layers must learn ten AND-pairs to compare them.
        self.seen_digit = torch.nn.Linear(width, len(DIGITS))
        self.asked_digit = self.seen_digit if shared_prompt_digit else torch.nn.Linear(width, len(DIGITS))


def pooled(features: list[torch.Tensor]) -> torch.Tensor:
    """Each image's features, max-pooled over its tokens: (images, width)."""
    return torch.stack([f.amax(0) for f in features])


def image_digit_losses(heads: Heads, features: list[list[torch.Tensor]], digits, mask) -> list[torch.Tensor]:
    """The image-digit loss at each place the family's features are read (one head each)."""
    return [masked_ce(head, pooled(images), digits, mask) for head, images in zip(heads.image_digit, features)]


def masked_ce(head, x, target, mask):
    if not mask.any():
        return x.sum() * 0
    return torch.nn.functional.cross_entropy(head(x[mask]), target[mask])


# ----- training --------------------------------------------------------------------
def train(family_name: str, out: Path, seed: int = 0, steps: int | None = None, n_train: int = 3000, n_val: int = 300,
          batch: int = 20, lr: float | None = None, att_weight: float = 1.0, threads: int = 2, device: str = "cpu",
          log=print, on_step=None, start: str | Path | None = None):
    """Train the recipe ``family_name`` (``steps`` and ``lr`` default to the recipe's) into ``out``.
    The model starts from ``start``'s weights where given (a checkpoint: a shipped name or a
    folder); otherwise from the recipe's ``warm_start``, or from its ``earlier_stage`` trained
    first (with the same arguments but its own steps and lr, into a temporary folder it logs and
    keeps, not into ``out``: a shipped checkpoint's folder holds one checkpoint).
    ``log`` receives the progress lines; ``on_step(step)``, when given, is called as each
    step's update is done (train_timing times the steps with it). A family may flush subnormal
    floats to zero while it trains (processor state for the whole thread): the caller's state is
    restored on return, so nothing run after training in the same process (tests, hypothesis's
    float strategies) inherits it."""
    recipe = recipes()[family_name]
    if start is None and recipe.earlier_stage is not None:
        start = Path(tempfile.mkdtemp(prefix=f"{recipe.earlier_stage.name}-"))
        log(f"{family_name}: its earlier stage {recipe.earlier_stage.name} first, into {start} (kept: "
            f"--start {start} retrains the later stage alone)")
        _train_recipe(recipe.earlier_stage, start, seed, None, n_train, n_val, batch, None, att_weight, threads,
                      device, log, None, None)
    return _train_recipe(recipe, out, seed, steps, n_train, n_val, batch, lr, att_weight, threads, device, log,
                         on_step, start)


def _train_recipe(recipe, out, seed, steps, n_train, n_val, batch, lr, att_weight, threads, device, log, on_step,
                  start):
    from collab_eval.checkpoints import resolve
    start = start if start is not None else recipe.warm_start
    flushing = flushes_subnormals()
    try:
        return _train(recipe(CORPUS), out, seed, steps, n_train, n_val, batch, lr, att_weight, threads, device, log,
                      on_step, None if start is None else resolve(str(start)))
    finally:
        torch.set_flush_denormal(flushing)


def flushes_subnormals() -> bool:
    """Whether this thread's floating-point unit flushes subnormal results to zero."""
    return (torch.tensor(1e-300, dtype=torch.float64) * 1e-10).item() == 0.0


def _train(family, out, seed, steps, n_train, n_val, batch, lr, att_weight, threads, device, log, on_step, start):
    started = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")  # bit-identical reruns are promised on the CPU
    torch.set_flush_denormal(family.flush_denormal)
    steps = steps or family.steps
    lr = lr or family.lr
    prompts = Prompts(family)
    layer = family.attention_layer()
    middle = family.config.text_config.num_hidden_layers // 2

    train_data = make_data(family, "train", n_train, seed + 1)
    val_data = make_data(family, "validation", n_val, seed + 2)
    log(f"{family.name}: {n_train} train / {n_val} val scenes in {time.perf_counter() - started:.0f}s")

    model = family.build_model(start).to(device)
    model.train()
    log(f"parameters: {sum(p.numel() for p in model.parameters()):,}" + (f", started from {start}" if start else ""))
    heads = Heads(family.config.text_config.hidden_size, family.digit_places, family.shared_prompt_digit).to(device)
    optim = torch.optim.AdamW([*family.param_groups(model, lr), {"params": list(heads.parameters()), "lr": lr}],
                              weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = random.Random(seed + 3)
    n_local = len(train_data["local"][0])
    zoom = 1  # how many of the local zoom levels (smallest window first) are in use
    # First answer tokens of each task's answers: [reading, existence].
    candidates = [torch.tensor([prompts.answer_ids[d][0] for d in DIGITS], device=device),
                  torch.tensor([prompts.answer_ids[a][0] for a in ("yes", "no")], device=device)]
    running = []
    exist_running = []  # two-image existence accuracy, for the log: existence is learned late and suddenly

    def question(i, images, data):
        """A reading or an existence question (half yes) on ``images``: the row, and the
        asked digit (-1 for reading)."""
        d = DIGITS[int(data["digit"][i])]
        if rng.random() < 0.5:
            return (prompts.read, prompts.answer_ids[d], images), -1
        yes = rng.random() < 0.5
        asked = d if yes else rng.choice([x for x in DIGITS if x != d])
        return (prompts.exist[asked], prompts.answer_ids["yes" if yes else "no"], images), DIGITS.index(asked)

    def single_rows(idx, data):
        rows, targets, asked, visible = [], [], [], []
        for i in idx:
            if rng.random() < 0.8:
                (row, a), v = question(i, [data["global"][i]], data), bool(data["readable"][i])
                targets.append(data["target"][i])
            else:
                row, a, v = (GENERIC_PROMPT, [], [data["global"][i]]), -1, False
                targets.append(torch.full_like(data["target"][i], 1 / len(data["target"][i])))
            rows.append(row), asked.append(a), visible.append(v)
        return rows, targets, torch.tensor(asked), torch.tensor(visible)

    def pair_rows(idx, data, zoom_levels):
        rows, reads, good, asked = [], [], [], []
        for i in idx:
            good.append(zoom_levels == 1 or rng.random() < 0.8)  # wrong crops once reading has started
            local = data["local"][i][rng.randrange(zoom_levels)] if good[-1] else data["wrong"][i]
            row, a = question(i, [data["global"][i], local], data)
            rows.append(row), asked.append(a), reads.append(a < 0)
        return rows, torch.tensor(reads), torch.tensor(good), torch.tensor(asked)

    def unknowable_loss(b, asked, visible):
        """Where the digit is not visible the answer cannot be known: instead of the true
        answer, the first answer token is trained toward the uniform distribution over the
        task's answers (10 digits, or yes/no), so that stage 1 is unsure exactly there; the
        end of the answer keeps its label. Returns the labels the model's own loss uses and
        a function of the logits giving the uniform-target loss."""
        questions = (b.labels != -100).any(1)
        blind = questions & ~visible
        pos = (b.labels != -100).float().argmax(1)
        labels = b.labels.clone()
        labels[blind, pos[blind]] = -100

        def loss(logits):
            if not blind.any():
                return logits.sum() * 0
            rows = torch.arange(len(pos), device=pos.device)[blind]
            logp = torch.log_softmax(logits[rows, pos[blind] - 1].float(), -1)
            per_row = [-logp[k, candidates[int(a) >= 0]].mean() for k, a in enumerate(asked[blind])]
            return torch.stack(per_row).mean()
        return labels, loss

    def question_heads(output, b, digits, asked, visible):
        """The seen and asked digits from the last prompt token's hidden state halfway up."""
        h = last_hidden(output, b, middle)
        return (masked_ce(heads.seen_digit, h, digits, visible & (b.labels != -100).any(1))
                + masked_ce(heads.asked_digit, h, asked.clamp_min(0), asked >= 0))

    for step in range(steps):
        idx1 = [rng.randrange(n_train) for _ in range(batch)]
        rows, targets, asked1, visible1 = single_rows(idx1, train_data)
        b1 = family.collate(rows, device)
        b1.labels, blind1 = unknowable_loss(b1, asked1.to(device), visible1.to(device))
        pass1 = family.forward(model, b1, with_maps=True, layer=layer)
        l_att = torch.stack([-(t.to(device) * torch.log(m + 1e-9)).sum() for t, m in zip(targets, pass1.maps)]).mean()
        digits1 = train_data["digit"][idx1].to(device)
        readable = train_data["readable"][idx1].to(device)
        l_global_digit = sum(image_digit_losses(heads, pass1.features, digits1, readable))
        l_q1 = question_heads(pass1.output, b1, digits1, asked1.to(device), visible1.to(device))

        idx2 = [rng.randrange(n_train) for _ in range(batch)]
        rows2, reads, good, asked2 = pair_rows(idx2, train_data, zoom)
        b2 = family.collate(rows2, device)
        reads, good = reads.to(device), good.to(device)
        labels2 = b2.labels
        visible2 = good | train_data["readable"][idx2].to(device)  # a wrong crop: the global view decides
        b2.labels, blind2 = unknowable_loss(b2, asked2.to(device), visible2)
        pass2 = family.forward(model, b2, with_maps=False, layer=layer)
        digits2 = train_data["digit"][idx2].to(device)
        local = [images[1::2] for images in pass2.features]  # each row's local crop
        l_digits = image_digit_losses(heads, local, digits2, good)
        l_digit = sum(l_digits)
        l_q2 = question_heads(pass2.output, b2, digits2, asked2.to(device), good)
        l_blind = blind1(pass1.output.logits) + blind2(pass2.output.logits)
        loss = (pass1.output.loss + pass2.output.loss + att_weight * l_att + l_digit + l_global_digit
                + l_q1 + l_q2 + l_blind)
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        if on_step is not None:
            on_step(step)

        logits, answer = first_answer_logits(pass2.output.logits.detach(), labels2)
        right = logits.argmax(-1) == answer
        running = (running + right[reads].tolist())[-4 * batch:]
        exist_running = (exist_running + right[~reads].tolist())[-4 * batch:]
        if zoom < n_local and len(running) >= 2 * batch and np.mean(running) > 0.5:
            zoom += 1
            running = []
        if step + 1 >= int(0.6 * steps):  # the last 40%: every zoom level, whatever the accuracy
            zoom = n_local
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step} loss {pass1.output.loss.item():.3f}/{pass2.output.loss.item():.3f} "
                f"att {l_att.item():.3f} digit {'+'.join(f'{d.item():.3f}' for d in l_digits)} "
                f"q {l_q1.item():.3f}/{l_q2.item():.3f} "
                f"blind {l_blind.item():.3f} "
                f"zoom {zoom} read2 {np.mean(running) if running else float('nan'):.2f} "
                f"exist2 {np.mean(exist_running) if exist_running else float('nan'):.2f} "
                f"t {time.perf_counter() - started:.0f}s")

    model.eval()
    metrics = evaluate(family, model, val_data, prompts, layer, device)
    metrics["train_seconds"] = round(time.perf_counter() - started, 1)
    log(json.dumps(metrics))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    family.save(model.to("cpu"), out)
    (out / "training_metrics.json").write_text(json.dumps(
        {"family": family.name, "seed": seed, "steps": steps, "lr": lr, "n_train": n_train, "n_val": n_val,
         "threads": threads, "device": device, **origin(family, start), **metrics}, indent=1) + "\n")
    return metrics


def origin(family: Family, start) -> dict:
    """Where the weights started, for training_metrics.json: the earlier stage's own metrics
    (read from its folder), the shipped checkpoint named by ``warm_start`` when it is the one
    used, or else the checkpoint given (``--start``), never the recipe's name for another one."""
    from collab_eval.checkpoints import resolve
    if start is None:
        return {}
    earlier = Path(start) / "training_metrics.json"
    if family.earlier_stage is not None and earlier.exists():
        metrics = json.loads(earlier.read_text())
        if metrics.get("family") == family.earlier_stage.name:
            return {"earlier_stage": metrics}
    if family.warm_start and str(start) == resolve(family.warm_start):
        return {"warm_start": family.warm_start}
    return {"started_from": str(start)}


@torch.no_grad()
def evaluate(family: Family, model, data, prompts: Prompts, layer: int, device="cpu") -> dict:
    """Validation numbers from the first answer token's logits (argmax and min-entropy; the
    benchmark's numbers come from lmms-eval runs, not from here): per task, stage-1 (global)
    and stage-2 (global + a 2x window around the digit) accuracy, the AUROC of stage 1's
    min-entropy for its errors, and retransmitting the most uncertain half against a random
    half; and how often the map's peak falls on the sign."""
    from collab_eval.analysis.curves import auroc
    from collab_eval.uncertainty import token_uncertainties
    n = len(data["digit"])
    rng = random.Random(0)
    asked = [DIGITS[int(d)] if i % 2 == 0 else rng.choice([x for x in DIGITS if x != DIGITS[int(d)]])
             for i, d in enumerate(data["digit"])]
    tasks = {"read": lambda i: (prompts.read, prompts.answer_ids[DIGITS[int(data["digit"][i])]]),
             "exist": lambda i: (prompts.exist[asked[i]], prompts.answer_ids["yes" if i % 2 == 0 else "no"])}
    metrics, hits = {}, []
    for task, ask in tasks.items():
        right, entropy = {}, []
        for stage, images in (("global", lambda i: [data["global"][i]]),
                              ("local", lambda i: [data["global"][i], data["local"][i][-1]])):
            right[stage] = []
            for s in range(0, n, 50):
                rows = [(*ask(i), images(i)) for i in range(s, min(n, s + 50))]
                b = family.collate(rows, device)
                p = family.forward(model, b, with_maps=stage == "global" and task == "read", layer=layer)
                logits, answer = first_answer_logits(p.output.logits, b.labels)
                right[stage] += (logits.argmax(-1) == answer).tolist()
                if stage == "global":
                    entropy += token_uncertainties(logits).min_entropy
                if p.maps is not None:
                    hits += [bool(data["target"][i][int(m.argmax())] > 0)
                             for i, m in zip(range(s, s + len(rows)), p.maps)]
        right1, right2, entropy = np.array(right["global"]), np.array(right["local"]), np.array(entropy)
        gated = right1.copy()
        most_uncertain = np.argsort(-entropy, kind="stable")[: n // 2]
        gated[most_uncertain] = right2[most_uncertain]
        auc = auroc(entropy, ~right1)  # None when every answer is right or every one wrong
        metrics.update({
            f"{task}_global": round(float(right1.mean()), 4), f"{task}_local": round(float(right2.mean()), 4),
            f"{task}_auroc_global_error": None if auc is None else round(auc, 4),
            f"{task}_gated_at_0.5": round(float(gated.mean()), 4),
            f"{task}_random_at_0.5": round(float(0.5 * right1.mean() + 0.5 * right2.mean()), 4),
        })
    readable = data["readable"].numpy()
    metrics["readable_share"] = round(float(readable.mean()), 4)
    metrics["attention_peak_on_sign"] = round(float(np.mean(hits)), 4)
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(recipes()), required=True)
    parser.add_argument("--out", required=True, help="e.g. collab_eval/weights/smalldetail-<family>")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="default: the family's own (its shipped checkpoint's)")
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-val", type=int, default=300)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--lr", type=float, help="default: the family's own (2e-3 unless it says)")
    parser.add_argument("--start", help="a checkpoint (shipped name or folder) to start from instead of the "
                        "recipe's warm start or earlier stage (e.g. that stage, already trained)")
    parser.add_argument("--att-weight", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2, help="the shipped checkpoints were trained with 2")
    parser.add_argument("--device", default="cpu",
                        help="cpu (the default) reproduces the shipped checkpoint bit for bit; cuda works too")
    args = parser.parse_args(argv)
    train(args.family, Path(args.out), seed=args.seed, steps=args.steps, n_train=args.n_train, n_val=args.n_val,
          batch=args.batch, lr=args.lr, att_weight=args.att_weight, threads=args.threads, device=args.device,
          log=lambda m: print(m, flush=True), start=args.start)


if __name__ == "__main__":
    main()
