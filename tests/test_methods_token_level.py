"""SimNPO, WGA, SatImp, CE-U and UNDIAL against hand computations done independently here (float64 loops)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from llm_unlearn.data.formatting import PaddingCollator, encode_qa
from llm_unlearn.methods import METHODS, UnlearnStep, get_method

FORGET = [("Where was Mara Velden born?", "Mara Velden was born in Porto."), ("What is 2+2?", "4")]
RETAIN = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Who wrote it?", "She did."),
]
TOKEN_LEVEL = ["simnpo", "wga", "satimp", "ce_u", "undial"]


def make_batch(tokenizer, pairs):
    return PaddingCollator(tokenizer.pad_token_id)([encode_qa(tokenizer, q, a) for q, a in pairs])


def targets(batch) -> list[list[tuple[int, int]]]:
    """Per row, the (position whose logits predict, target token) pairs of the answer tokens."""
    labels = batch["labels"]
    return [
        [(t - 1, labels[row, t].item()) for t in range(1, labels.shape[1]) if labels[row, t].item() != -100]
        for row in range(labels.shape[0])
    ]


def forward(model, batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def no_grad_logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return forward(model, batch).double()


def hand_token_logprobs(logits, batch) -> list[list[torch.Tensor]]:
    """log p(y_t) per answer token from a plain float64 softmax (keeps the graph when `logits` has one)."""
    return [
        [torch.log(torch.softmax(logits[row, pos].double(), dim=-1)[y]) for pos, y in row_targets]
        for row, row_targets in enumerate(targets(batch))
    ]


def hand_nll(model, batch) -> list[float]:
    return [-sum(lps).item() / len(lps) for lps in hand_token_logprobs(no_grad_logits(model, batch), batch)]


def hand_kl(reference, model, batch) -> list[float]:
    logits, ref_logits = no_grad_logits(model, batch), no_grad_logits(reference, batch)
    result = []
    for row, row_targets in enumerate(targets(batch)):
        terms = []
        for pos, _ in row_targets:
            p, q = torch.softmax(ref_logits[row, pos], -1), torch.softmax(logits[row, pos], -1)
            terms.append(sum(p[v].item() * math.log(p[v].item() / q[v].item()) for v in range(p.numel())))
        result.append(sum(terms) / len(terms))
    return result


def hand_cross_entropy(logits, batch, target_of) -> float:
    """Mean over examples of the per-example token mean of -sum_v q_v log p_v, q = target_of(row, pos, y)."""
    per_example = []
    for row, row_targets in enumerate(targets(batch)):
        terms = []
        for pos, y in row_targets:
            p = torch.softmax(logits[row, pos], -1)
            q = target_of(row, pos, y)
            terms.append(-sum(q[v].item() * math.log(p[v].item()) for v in range(p.numel()) if q[v] > 0))
        per_example.append(sum(terms) / len(terms))
    return sum(per_example) / len(per_example)


def flat_grad(model) -> torch.Tensor:
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    return grads


def reference_of(module):
    @contextlib.contextmanager
    def reference_context():
        with torch.no_grad():
            yield module

    return reference_context


def run(name, model, batches, reference=None, **kwargs):
    method = get_method(name)
    return method.loss(UnlearnStep(model, batches, reference=reference), method.make_config(kwargs))


# --- registry and configs ---------------------------------------------------------------------------------


def test_registry_has_all_five_with_their_defaults():
    assert set(TOKEN_LEVEL) <= set(METHODS)
    simnpo = get_method("simnpo").make_config(None)
    assert (simnpo.beta, simnpo.delta, simnpo.gamma, simnpo.alpha) == (4.5, 0.0, 0.125, 1.0)
    assert simnpo.uses_retain and not simnpo.needs_reference_model
    wga = get_method("wga").make_config(None)
    assert (wga.beta, wga.gamma, wga.alpha, wga.retain_loss) == (1.0, 1.0, 1.0, "nll")
    satimp = get_method("satimp").make_config(None)
    assert (satimp.beta1, satimp.beta2) == (5.0, 1.0)
    ce_u = get_method("ce_u").make_config(None)
    assert (ce_u.gamma, ce_u.alpha) == (1.0, 0.0)
    assert not ce_u.uses_retain and not ce_u.needs_reference_model
    undial = get_method("undial").make_config(None)
    assert (undial.beta, undial.gamma, undial.alpha) == (10.0, 1.0, 0.0)
    assert undial.needs_reference_model and not undial.uses_retain
    assert get_method("wga").make_config({"retain_loss": "kl"}).needs_reference_model
    assert not get_method("wga").make_config({"retain_loss": "kl", "alpha": 0.0}).needs_reference_model


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("wga", {"beta1": 1.0}, r"method 'wga' does not take \['beta1'\].*beta"),
        ("ce_u", {"beta": 1.0}, r"method 'ce_u' does not take \['beta'\]"),
        ("simnpo", {"beta": 0.0}, r"simnpo needs a finite beta > 0.*beta=0.0"),
        ("simnpo", {"beta": -1.0}, r"simnpo needs a finite beta > 0"),
        ("simnpo", {"delta": math.nan}, r"simnpo needs a finite delta"),
        ("wga", {"beta": -0.5}, r"wga needs a finite beta >= 0; got beta=-0.5"),
        ("satimp", {"beta1": -1.0}, r"satimp needs a finite beta1 >= 0"),
        ("satimp", {"beta2": math.inf}, r"satimp needs a finite beta2 >= 0"),
        ("undial", {"beta": -2.0}, r"undial needs a finite beta >= 0"),
        ("undial", {"retain_loss": "mse"}, r"retain_loss='mse'.*kl.*nll"),
    ],
)
def test_configs_reject_unknown_and_invalid_hyperparameters(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_method(name).make_config(kwargs)


# --- SimNPO -----------------------------------------------------------------------------------------------


def hand_simnpo(model, batch, beta, delta) -> float:
    # seqlogp/|y| = -NLL, so the sigmoid's argument is -beta * (-NLL) - delta.
    terms = [math.log(1 / (1 + math.exp(-(beta * nll - delta)))) for nll in hand_nll(model, batch)]
    return -(2 / beta) * sum(terms) / len(terms)


@pytest.mark.parametrize(("beta", "delta"), [(4.5, 0.0), (2.0, 0.7), (4.5, -3.0)])
def test_simnpo_matches_hand_computation(tiny_model, tiny_tokenizer, beta, delta):
    forget = make_batch(tiny_tokenizer, FORGET)
    loss, logs = run("simnpo", tiny_model, {"forget": forget}, beta=beta, delta=delta, alpha=0.0, gamma=1.0)
    assert loss.item() == pytest.approx(hand_simnpo(tiny_model, forget, beta, delta), rel=1e-5)
    assert logs["forget_nll"] == pytest.approx(sum(hand_nll(tiny_model, forget)) / 2, rel=1e-5)


def test_simnpo_delta_shift_changes_the_loss_as_the_formula_says(tiny_model, tiny_tokenizer):
    forget = make_batch(tiny_tokenizer, FORGET)
    base, _ = run("simnpo", tiny_model, {"forget": forget}, alpha=0.0, gamma=1.0, beta=1.0)
    shifted, _ = run("simnpo", tiny_model, {"forget": forget}, alpha=0.0, gamma=1.0, beta=1.0, delta=2.0)
    # A larger margin lowers the sigmoid's argument, which raises -log sigmoid.
    assert shifted.item() > base.item()
    assert shifted.item() - base.item() == pytest.approx(
        hand_simnpo(tiny_model, forget, 1.0, 2.0) - hand_simnpo(tiny_model, forget, 1.0, 0.0), rel=1e-5
    )


def test_simnpo_with_retain_nll_combines_gamma_and_alpha(tiny_model, tiny_tokenizer):
    forget, retain = make_batch(tiny_tokenizer, FORGET), make_batch(tiny_tokenizer, RETAIN)
    loss, logs = run("simnpo", tiny_model, {"forget": forget, "retain": retain})
    retain_nll = sum(hand_nll(tiny_model, retain)) / 2
    expected = 0.125 * hand_simnpo(tiny_model, forget, 4.5, 0.0) + 1.0 * retain_nll
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["retain_nll"] == pytest.approx(retain_nll, rel=1e-5)


def test_simnpo_small_beta_gradient_approaches_gradient_ascent(tiny_model, tiny_tokenizer):
    forget = make_batch(tiny_tokenizer, FORGET)
    loss, _ = run("simnpo", tiny_model, {"forget": forget}, beta=1e-4, alpha=0.0, gamma=1.0)
    loss.backward()
    simnpo_grad = flat_grad(tiny_model)
    lps = hand_token_logprobs(forward(tiny_model, forget), forget)
    minus_mean_nll = sum(sum(row) / len(row) for row in lps) / len(lps)
    minus_mean_nll.backward()
    ascent_grad = flat_grad(tiny_model).to(simnpo_grad.dtype)
    cosine = torch.nn.functional.cosine_similarity(simnpo_grad, ascent_grad, dim=0).item()
    assert cosine > 0.999
    # d/dNLL of -(2/beta) log sigmoid(beta * NLL) is -2 sigmoid(-beta * NLL) -> -1: same size, not only direction.
    assert simnpo_grad.norm().item() == pytest.approx(ascent_grad.norm().item(), rel=1e-3)


# --- WGA and SatImp ---------------------------------------------------------------------------------------


def hand_weighted_ascent(lps, weight_of) -> torch.Tensor:
    """mean_i mean_t(w_t * lp_t) with w_t = weight_of(p_t) from the detached probability."""
    per_example = [sum(weight_of(lp.detach().exp()) * lp for lp in row) / len(row) for row in lps]
    return sum(per_example) / len(per_example)


def wga_weight(beta):
    return lambda p: p**beta


def satimp_weight(beta1, beta2):
    return lambda p: p**beta1 * (1 - p) ** beta2


@pytest.mark.parametrize(
    ("name", "kwargs", "weight_of"),
    [
        ("wga", {"beta": 1.0}, wga_weight(1.0)),
        ("wga", {"beta": 2.5}, wga_weight(2.5)),
        ("satimp", {"beta1": 5.0, "beta2": 1.0}, satimp_weight(5.0, 1.0)),
        ("satimp", {"beta1": 1.0, "beta2": 2.0}, satimp_weight(1.0, 2.0)),
        ("satimp", {"beta1": 0.5, "beta2": 0.0}, satimp_weight(0.5, 0.0)),
    ],
)
def test_weighted_ascent_matches_hand_value_and_gradient_with_detached_weights(
    tiny_model, tiny_tokenizer, name, kwargs, weight_of
):
    forget = make_batch(tiny_tokenizer, FORGET)
    loss, _ = run(name, tiny_model, {"forget": forget}, alpha=0.0, **kwargs)
    loss.backward()
    method_grad = flat_grad(tiny_model)
    expected = hand_weighted_ascent(hand_token_logprobs(forward(tiny_model, forget), forget), weight_of)
    expected.backward()
    hand_grad = flat_grad(tiny_model).to(method_grad.dtype)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # A gradient through the weights would add w'(p) p lp to each token's factor and break this equality.
    assert torch.allclose(method_grad, hand_grad, rtol=1e-4, atol=1e-9)


def test_wga_gradient_differs_from_one_that_flows_through_the_weights(tiny_model, tiny_tokenizer):
    forget = make_batch(tiny_tokenizer, FORGET)
    loss, _ = run("wga", tiny_model, {"forget": forget}, alpha=0.0, beta=1.0)
    loss.backward()
    method_grad = flat_grad(tiny_model)
    lps = hand_token_logprobs(forward(tiny_model, forget), forget)
    attached = sum(sum(lp.exp() * lp for lp in row) / len(row) for row in lps) / len(lps)
    attached.backward()
    assert not torch.allclose(method_grad, flat_grad(tiny_model).to(method_grad.dtype), rtol=1e-2)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("wga", {"beta": 0.0}), ("satimp", {"beta1": 0.0, "beta2": 0.0})]
)
def test_zero_exponents_reduce_to_gradient_ascent(tiny_model, tiny_tokenizer, name, kwargs):
    forget = make_batch(tiny_tokenizer, FORGET)
    loss, logs = run(name, tiny_model, {"forget": forget}, alpha=0.0, **kwargs)
    mean_nll = sum(hand_nll(tiny_model, forget)) / 2
    assert loss.item() == pytest.approx(-mean_nll, rel=1e-5)
    assert logs["forget_mean_weight"] == pytest.approx(1.0)


@pytest.mark.parametrize(("gamma", "alpha"), [(1.0, 1.0), (0.5, 2.0)])
def test_wga_combines_with_retain_nll(tiny_model, tiny_tokenizer, gamma, alpha):
    forget, retain = make_batch(tiny_tokenizer, FORGET), make_batch(tiny_tokenizer, RETAIN)
    loss, logs = run("wga", tiny_model, {"forget": forget, "retain": retain}, gamma=gamma, alpha=alpha)
    lps = hand_token_logprobs(no_grad_logits(tiny_model, forget), forget)
    forget_loss = hand_weighted_ascent(lps, wga_weight(1.0)).item()
    retain_nll = sum(hand_nll(tiny_model, retain)) / 2
    assert loss.item() == pytest.approx(gamma * forget_loss + alpha * retain_nll, rel=1e-5)
    assert logs["retain_nll"] == pytest.approx(retain_nll, rel=1e-5)


def test_satimp_combines_with_retain_kl(tiny_tokenizer):
    from conftest import build_tiny_llama

    model, reference = build_tiny_llama(tiny_tokenizer, seed=1), build_tiny_llama(tiny_tokenizer, seed=2)
    forget, retain = make_batch(tiny_tokenizer, FORGET), make_batch(tiny_tokenizer, RETAIN)
    batches = {"forget": forget, "retain": retain}
    loss, logs = run(
        "satimp", model, batches, reference_of(reference), alpha=3.0, retain_loss="kl", beta1=1.0
    )
    lps = hand_token_logprobs(no_grad_logits(model, forget), forget)
    forget_loss = hand_weighted_ascent(lps, satimp_weight(1.0, 1.0)).item()
    kl = sum(hand_kl(reference, model, retain)) / 2
    assert logs["retain_kl"] == pytest.approx(kl, rel=1e-4)
    assert loss.item() == pytest.approx(forget_loss + 3.0 * kl, rel=1e-4)


# --- CE-U -------------------------------------------------------------------------------------------------


def ce_u_hand_target(logits):
    """q_v = p_v / (1 - p_y) for v != y, q_y = 0: the softmax without the true token, by renormalising."""

    def target_of(row, pos, y):
        p = torch.softmax(logits[row, pos], -1)
        q = p / (1 - p[y])
        q[y] = 0.0
        return q

    return target_of


def test_ce_u_matches_hand_computation(tiny_model, tiny_tokenizer):
    forget = make_batch(tiny_tokenizer, FORGET)
    loss, logs = run("ce_u", tiny_model, {"forget": forget})
    logits = no_grad_logits(tiny_model, forget)
    expected = hand_cross_entropy(logits, forget, ce_u_hand_target(logits))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs == {"forget_ce_u": pytest.approx(expected, rel=1e-5)}


def test_ce_u_target_has_no_mass_on_the_true_token():
    from llm_unlearn.methods.ce_u import ce_u_target

    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 0.0, 9.0, 0.0]], requires_grad=True)
    target = ce_u_target(logits, torch.tensor([0, 2]))
    assert not target.requires_grad
    assert target[0, 0].item() == 0.0 and target[1, 2].item() == 0.0
    assert target.sum(dim=-1).tolist() == pytest.approx([1.0, 1.0])
    rest = torch.tensor([1.0, 0.0, -1.0]).double().exp()
    assert target[0, 1:].tolist() == pytest.approx((rest / rest.sum()).tolist(), rel=1e-6)
    assert target[1].tolist() == pytest.approx([1 / 3, 1 / 3, 0.0, 1 / 3], rel=1e-6)


def test_ce_u_pushes_the_true_token_down_and_ignores_prompt_positions(tiny_model, tiny_tokenizer):
    forget = make_batch(tiny_tokenizer, FORGET)
    step = UnlearnStep(tiny_model, {"forget": forget})
    logits = step.logits("forget")
    logits.retain_grad()
    method = get_method("ce_u")
    loss, _ = method.loss(step, method.make_config(None))
    loss.backward()
    target_pairs = targets(forget)
    for row, row_targets in enumerate(target_pairs):
        for pos, y in row_targets:
            # Gradient descent lowers a logit whose gradient is positive.
            assert logits.grad[row, pos, y].item() > 0
        positions = {pos for pos, _ in row_targets}
        for pos in range(logits.shape[1]):
            if pos not in positions:
                assert logits.grad[row, pos].abs().max().item() == 0.0


# --- UNDIAL -----------------------------------------------------------------------------------------------


def undial_hand_target(ref_logits, beta):
    def target_of(row, pos, y):
        adjusted = ref_logits[row, pos].clone()
        adjusted[y] -= beta
        return torch.softmax(adjusted, -1)

    return target_of


def test_undial_with_itself_as_reference_and_beta_zero_is_the_entropy(tiny_model, tiny_tokenizer):
    forget = make_batch(tiny_tokenizer, FORGET)
    loss, _ = run("undial", tiny_model, {"forget": forget}, reference_of(tiny_model), beta=0.0)
    logits = no_grad_logits(tiny_model, forget)
    per_example = []
    for row, row_targets in enumerate(targets(forget)):
        entropies = []
        for pos, _ in row_targets:
            p = torch.softmax(logits[row, pos], -1)
            entropies.append(-sum(p[v].item() * math.log(p[v].item()) for v in range(p.numel())))
        per_example.append(sum(entropies) / len(entropies))
    assert loss.item() == pytest.approx(sum(per_example) / len(per_example), rel=1e-5)


def test_undial_matches_hand_computation_with_a_separate_reference(tiny_tokenizer):
    from conftest import build_tiny_llama

    model, reference = build_tiny_llama(tiny_tokenizer, seed=1), build_tiny_llama(tiny_tokenizer, seed=2)
    forget = make_batch(tiny_tokenizer, FORGET)
    step = UnlearnStep(model, {"forget": forget}, reference=reference_of(reference))
    method = get_method("undial")
    loss, logs = method.loss(step, method.make_config(None))
    target_of = undial_hand_target(no_grad_logits(reference, forget), 10.0)
    expected = hand_cross_entropy(no_grad_logits(model, forget), forget, target_of)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs == {"forget_undial_ce": pytest.approx(expected, rel=1e-5)}
    # Building the target in place must not alter the cached reference logits.
    assert torch.equal(step.reference_logits("forget"), forward(reference, forget).detach())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is None for p in reference.parameters())


def test_undial_combines_with_retain_kl(tiny_tokenizer):
    from conftest import build_tiny_llama

    model, reference = build_tiny_llama(tiny_tokenizer, seed=1), build_tiny_llama(tiny_tokenizer, seed=2)
    forget, retain = make_batch(tiny_tokenizer, FORGET), make_batch(tiny_tokenizer, RETAIN)
    batches = {"forget": forget, "retain": retain}
    loss, logs = run(
        "undial", model, batches, reference_of(reference), beta=3.0, gamma=2.0, alpha=0.5, retain_loss="kl"
    )
    target_of = undial_hand_target(no_grad_logits(reference, forget), 3.0)
    forget_ce = hand_cross_entropy(no_grad_logits(model, forget), forget, target_of)
    kl = sum(hand_kl(reference, model, retain)) / 2
    assert logs["forget_undial_ce"] == pytest.approx(forget_ce, rel=1e-5)
    assert logs["retain_kl"] == pytest.approx(kl, rel=1e-4)
    assert loss.item() == pytest.approx(2.0 * forget_ce + 0.5 * kl, rel=1e-4)


def test_undial_without_a_reference_model_says_so(tiny_model, tiny_tokenizer):
    with pytest.raises(RuntimeError, match="no reference model"):
        run("undial", tiny_model, {"forget": make_batch(tiny_tokenizer, FORGET)})


def test_loss_is_an_average_of_per_example_values(tiny_tokenizer):
    """Splitting a batch in two and averaging the halves gives the whole batch's loss (token means per example)."""
    from conftest import build_tiny_llama

    model, reference = build_tiny_llama(tiny_tokenizer, seed=1), build_tiny_llama(tiny_tokenizer, seed=2)
    for name in TOKEN_LEVEL:
        whole, _ = run(
            name, model, {"forget": make_batch(tiny_tokenizer, FORGET)}, reference_of(reference), alpha=0.0
        )
        halves = [
            run(
                name,
                model,
                {"forget": make_batch(tiny_tokenizer, [pair])},
                reference_of(reference),
                alpha=0.0,
            )[0]
            for pair in FORGET
        ]
        assert whole.item() == pytest.approx(sum(h.item() for h in halves) / 2, rel=1e-4), name
