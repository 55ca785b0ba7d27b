"""Actor-critic (pytorch/examples reinforcement_learning/actor_critic.py): one network with an
action head (softmax) and a value head, Categorical sampling, SavedAction namedtuples,
discounted returns normalized with float32 eps, policy loss on the advantage and
F.smooth_l1_loss for the critic, Adam; on a small self-written balancing task (no gym)."""
from collections import namedtuple
from itertools import count

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.distributions import Categorical


class Balance:
    """Keep a drifting, damped needle upright: push left (0) or right (1); the episode ends
    when the angle leaves [-1, 1] or after 30 steps; +1 reward per step survived."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def reset(self):
        self.angle, self.speed, self.t = self.rng.uniform(-0.2, 0.2, 2).tolist() + [0]
        return self._obs(), {}

    def _obs(self):
        return np.array([self.angle, self.speed, self.t / 30, 1.0], dtype=np.float32)

    def step(self, action):
        self.speed = 0.5 * self.speed + 0.05 * self.angle + (0.1 if action == 1 else -0.1)
        self.angle += self.speed
        self.t += 1
        terminated = abs(self.angle) > 1.0
        return self._obs(), 1.0, terminated, self.t >= 30, {}


SavedAction = namedtuple('SavedAction', ['log_prob', 'value'])


class Policy(nn.Module):
    """implements both actor and critic in one model"""

    def __init__(self):
        super(Policy, self).__init__()
        self.affine1 = nn.Linear(4, 32)

        # actor's layer
        self.action_head = nn.Linear(32, 2)

        # critic's layer
        self.value_head = nn.Linear(32, 1)

        # action & reward buffer
        self.saved_actions = []
        self.rewards = []

    def forward(self, x):
        x = F.relu(self.affine1(x))

        # actor: chooses action to take from state s_t by returning the probabilities
        action_prob = F.softmax(self.action_head(x), dim=-1)

        # critic: evaluates being in the state s_t
        state_values = self.value_head(x)

        return action_prob, state_values


def main(seed=0, compile=False, initial_state=None, episodes=60, gamma=0.99, sample=True):
    """`sample=False` draws the actions with NumPy from the policy's probabilities instead of
    Categorical.sample, so that torch and kiln take the same actions (the comparison run)."""
    torch.manual_seed(seed)
    env = Balance(seed)
    action_rng = np.random.default_rng(seed + 1)
    model = Policy()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = optim.Adam(model.parameters(), lr=3e-2)
    eps = np.finfo(np.float32).eps.item()

    def select_action(state):
        state = torch.from_numpy(state).float()
        probs, state_value = model(state)

        # create a categorical distribution over the list of probabilities of actions
        m = Categorical(probs)

        # and sample an action using the distribution
        if sample:
            action = m.sample()
        else:
            p_right = probs[1].item()
            action = torch.tensor(int(action_rng.random() < p_right))

        # save to action buffer
        model.saved_actions.append(SavedAction(m.log_prob(action), state_value))

        # the action to take (left or right)
        return action.item()

    def finish_episode():
        """Calculates actor and critic loss and performs backprop."""
        R = 0
        saved_actions = model.saved_actions
        policy_losses = []  # list to save actor (policy) loss
        value_losses = []  # list to save critic (value) loss
        returns = []  # list to save the true values

        # calculate the true value using rewards returned from the environment
        for r in model.rewards[::-1]:
            # calculate the discounted value
            R = r + gamma * R
            returns.insert(0, R)

        returns = torch.tensor(returns)
        returns = (returns - returns.mean()) / (returns.std() + eps)

        for (log_prob, value), R in zip(saved_actions, returns):
            advantage = R - value.item()

            # calculate actor (policy) loss
            policy_losses.append(-log_prob * advantage)

            # calculate critic (value) loss using L1 smooth loss
            value_losses.append(F.smooth_l1_loss(value, torch.tensor([R])))

        optimizer.zero_grad()

        # sum up all the values of policy_losses and value_losses
        loss = torch.stack(policy_losses).sum() + torch.stack(value_losses).sum()

        loss.backward()
        optimizer.step()

        # reset rewards and action buffer
        del model.rewards[:]
        del model.saved_actions[:]
        return loss.item()

    losses, lengths = [], []
    running_reward = 10
    for i_episode in count(1):
        state, _ = env.reset()
        ep_reward = 0
        for t in range(1, 10000):
            action = select_action(state)
            state, reward, terminated, truncated, _ = env.step(action)
            model.rewards.append(reward)
            ep_reward += reward
            if terminated or truncated:
                break

        # update cumulative reward
        running_reward = 0.05 * ep_reward + (1 - 0.05) * running_reward
        losses.append(finish_episode())
        lengths.append(t)
        if i_episode == episodes:
            break
    return {"losses": losses, "lengths": lengths, "running_reward": running_reward,
            "late_length": float(np.mean(lengths[-10:])), "initial_state": initial}


if __name__ == "__main__":
    print(main())
