"""REINFORCE (pytorch/examples reinforcement_learning/reinforce.py): a dropout policy,
Categorical sampling, discounted normalized returns; on a small corridor environment."""
from collections import deque

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.distributions import Categorical


class Corridor:
    """Walk right to the goal within 12 steps; each step costs a little."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def reset(self):
        self.pos, self.t = int(self.rng.integers(0, 2)), 0
        return self._obs(), {}

    def _obs(self):
        return np.array([self.pos / 4, 1.0, self.t / 12, (self.pos % 2)], dtype=np.float32)

    def step(self, action):
        self.pos = max(0, self.pos + (1 if action == 1 else -1))
        self.t += 1
        done = self.pos >= 4
        return self._obs(), (1.0 if done else -0.05), done, self.t >= 12, {}


class Policy(nn.Module):
    def __init__(self):
        super(Policy, self).__init__()
        self.affine1 = nn.Linear(4, 32)
        self.dropout = nn.Dropout(p=0.6)
        self.affine2 = nn.Linear(32, 2)
        self.saved_log_probs = []
        self.rewards = []

    def forward(self, x):
        x = self.affine1(x)
        x = self.dropout(x)
        x = F.relu(x)
        action_scores = self.affine2(x)
        return F.softmax(action_scores, dim=1)


def main(seed=0, compile=False, initial_state=None, episodes=40, gamma=0.99):
    torch.manual_seed(seed)
    env = Corridor(seed)
    policy = Policy()
    optimizer = optim.Adam(policy.parameters(), lr=3e-2)
    eps = np.finfo(np.float32).eps.item()

    def select_action(state):
        state = torch.from_numpy(state).float().unsqueeze(0)
        probs = policy(state)
        m = Categorical(probs)
        action = m.sample()
        policy.saved_log_probs.append(m.log_prob(action))
        return action.item()

    def finish_episode():
        R = 0
        policy_loss = []
        returns = deque()
        for r in policy.rewards[::-1]:
            R = r + gamma * R
            returns.appendleft(R)
        returns = torch.tensor(returns)
        returns = (returns - returns.mean()) / (returns.std() + eps)
        for log_prob, R in zip(policy.saved_log_probs, returns):
            policy_loss.append(-log_prob * R)
        optimizer.zero_grad()
        policy_loss = torch.cat(policy_loss).sum()
        policy_loss.backward()
        optimizer.step()
        del policy.rewards[:]
        del policy.saved_log_probs[:]

    lengths = []
    for i_episode in range(episodes):
        state, _ = env.reset()
        for t in range(1, 100):
            action = select_action(state)
            state, reward, terminated, truncated, _ = env.step(action)
            policy.rewards.append(reward)
            if terminated or truncated:
                break
        lengths.append(t)
        finish_episode()
    # episode lengths, averaged per 10 episodes: shorter is better
    return {"losses": [float(np.mean(lengths[i:i + 10])) for i in range(0, episodes, 10)],
            "late_length": float(np.mean(lengths[-10:]))}


if __name__ == "__main__":
    print(main())
