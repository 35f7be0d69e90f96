"""The ENAS LSTM controller and its REINFORCE update (Pham et al., "Efficient Neural Architecture
Search via Parameter Sharing", 2018).

The controller emits one decision after another: an LSTM cell reads the embedding of the
previous decision (a learned start vector for the first), and a softmax head per decision gives
that decision's distribution. Logits are tempered as in ENAS: ``tanh_c * tanh(logits / T)``.

Fixed defects of the AutoGluon original: the policy gradient sums over *all* architectures
sampled for an update (not only the last), and an entropy bonus keeps the policy from
collapsing early.
"""
from __future__ import annotations

from dataclasses import dataclass

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn, rnn


@dataclass
class Sample:
    """A batch of decisions: actions[b][i] is architecture b's option index for decision i."""

    actions: np.ndarray
    log_prob: nd.NDArray | None
    entropy: nd.NDArray | None
    probabilities: list[np.ndarray]


class Controller(gluon.Block):
    """LSTM policy over a sequence of categorical decisions of given sizes."""

    def __init__(self, decision_sizes: list[int], hidden_size: int = 100,
                 temperature: float | None = 5.0, tanh_constant: float | None = 2.5, **kwargs):
        super().__init__(**kwargs)
        self.decision_sizes = list(decision_sizes)
        self.hidden_size = hidden_size
        self.temperature = temperature
        self.tanh_constant = tanh_constant
        with self.name_scope():
            self.start = self.params.get("start", shape=(1, hidden_size),
                                         init=mx.init.Uniform(0.1))
            self.cell = rnn.LSTMCell(hidden_size, input_size=hidden_size)
            self.embeddings = nn.Sequential()
            self.heads = nn.Sequential()
            for index, size in enumerate(self.decision_sizes):
                if index + 1 < len(self.decision_sizes):  # the last choice feeds nothing
                    self.embeddings.add(nn.Embedding(size, hidden_size,
                                                     weight_initializer=mx.init.Uniform(0.1)))
                self.heads.add(nn.Dense(size, in_units=hidden_size,
                                        weight_initializer=mx.init.Uniform(0.1)))

    def _logits(self, hidden: nd.NDArray, index: int) -> nd.NDArray:
        logits = self.heads[index](hidden)
        if self.temperature:
            logits = logits / self.temperature
        if self.tanh_constant:
            logits = self.tanh_constant * nd.tanh(logits)
        return logits

    def run(self, batch_size: int = 1, rng: np.random.RandomState | None = None,
                actions: np.ndarray | None = None, greedy: bool = False) -> Sample:
        """Sample (rng), take the argmax (greedy) or score given actions (teacher forcing).

        Log-probabilities and entropies are summed over decisions, one value per architecture;
        under `autograd.record()` they carry gradients for the policy update.
        """
        ctx = self.start.list_ctx()[0]
        if actions is not None:
            batch_size = actions.shape[0]
        inputs = nd.broadcast_to(self.start.data(ctx), (batch_size, self.hidden_size))
        states = self.cell.begin_state(batch_size=batch_size, ctx=ctx)
        chosen = np.zeros((batch_size, len(self.decision_sizes)), dtype=np.int64)
        log_prob = entropy = None
        probabilities = []
        for index, size in enumerate(self.decision_sizes):
            hidden, states = self.cell(inputs, states)
            log_p = nd.log_softmax(self._logits(hidden, index), axis=-1)
            p = nd.exp(log_p)
            p_np = p.asnumpy().astype(np.float64)
            probabilities.append(p_np)
            if actions is not None:
                step = actions[:, index].astype(np.int64)
            elif greedy:
                step = p_np.argmax(axis=1)
            else:
                if rng is None:
                    raise ValueError("sampling needs an rng")
                cumulative = np.cumsum(p_np, axis=1)
                draws = rng.random_sample(batch_size)[:, None]
                step = np.minimum((draws > cumulative).sum(axis=1), size - 1)
            chosen[:, index] = step
            step_nd = nd.array(step, ctx=ctx)
            picked = nd.pick(log_p, step_nd, axis=-1)
            step_entropy = -(p * log_p).sum(axis=-1)
            log_prob = picked if log_prob is None else log_prob + picked
            entropy = step_entropy if entropy is None else entropy + step_entropy
            if index + 1 < len(self.decision_sizes):
                inputs = self.embeddings[index](step_nd)
        return Sample(actions=chosen, log_prob=log_prob, entropy=entropy,
                      probabilities=probabilities)


class Reinforce:
    """REINFORCE with an exponential-moving-average baseline and an entropy bonus.

    loss = -sum_b (R_b - baseline) * log pi(a_b) - entropy_weight * sum_b H(pi | a_b)
    The baseline is updated with the batch's mean reward before the advantage is taken, as in
    the ENAS reference implementation.
    """

    def __init__(self, controller: Controller, lr: float, baseline_decay: float,
                 entropy_weight: float):
        self.controller = controller
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.baseline: float | None = None
        self.trainer = gluon.Trainer(controller.collect_params(), "adam",
                                     {"learning_rate": lr}, kvstore=None,
                                     update_on_kvstore=False)

    def update(self, actions: np.ndarray, rewards: np.ndarray) -> dict:
        rewards = np.asarray(rewards, dtype=np.float64)
        mean_reward = float(rewards.mean())
        if self.baseline is None:
            self.baseline = mean_reward
        else:
            self.baseline = (self.baseline_decay * self.baseline
                             + (1.0 - self.baseline_decay) * mean_reward)
        ctx = self.controller.start.list_ctx()[0]
        advantage = nd.array(rewards - self.baseline, ctx=ctx)
        with autograd.record():
            scored = self.controller.run(actions=actions)
            loss = (-(advantage * scored.log_prob).sum()
                    - self.entropy_weight * scored.entropy.sum())
        loss.backward()
        self.trainer.step(1)
        return {"reward": mean_reward, "baseline": self.baseline,
                "entropy": float(scored.entropy.mean().asscalar()),
                "controller_loss": float(loss.asscalar())}
