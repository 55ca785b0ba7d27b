"""The "Reinforcement Learning (DQN) Tutorial" patterns on a small self-written environment (no
gymnasium): a ReplayMemory of Transition namedtuples in a deque, epsilon-greedy actions with
policy_net(state).max(1).indices.view(1, 1), a batch built with torch.cat and a non-final mask,
gather for Q(s, a), the target net's max under no_grad written through the mask,
SmoothL1Loss, AdamW with amsgrad, clip_grad_value_, and the soft target update through the
state dicts. Python's `random` drives exploration and sampling, seeded the same in both runs."""
import math
import random
from collections import deque, namedtuple

import torch
import torch.nn as nn
import torch.optim as optim

Transition = namedtuple('Transition', ('state', 'action', 'next_state', 'reward'))


class ReplayMemory(object):
    def __init__(self, capacity):
        self.memory = deque([], maxlen=capacity)

    def push(self, *args):
        self.memory.append(Transition(*args))

    def sample(self, batch_size):
        return random.sample(self.memory, batch_size)

    def __len__(self):
        return len(self.memory)


class DQN(nn.Module):
    def __init__(self, n_observations, n_actions):
        super(DQN, self).__init__()
        self.layer1 = nn.Linear(n_observations, 32)
        self.layer2 = nn.Linear(32, 32)
        self.layer3 = nn.Linear(32, n_actions)

    def forward(self, x):
        x = torch.relu(self.layer1(x))
        x = torch.relu(self.layer2(x))
        return self.layer3(x)


class Corridor:
    """Walk left or right on 7 cells; reward 1 at the right end (terminal), -0.05 per step."""

    def reset(self):
        self.pos = 3
        return self._obs()

    def _obs(self):
        return [self.pos / 6.0, 1.0 if self.pos > 3 else 0.0, 1.0 if self.pos < 3 else 0.0]

    def step(self, action):
        self.pos = max(0, min(6, self.pos + (1 if action == 1 else -1)))
        terminated = self.pos == 6
        return self._obs(), (1.0 if terminated else -0.05), terminated


BATCH_SIZE = 16
GAMMA = 0.9
EPS_START, EPS_END, EPS_DECAY = 0.9, 0.05, 50
TAU = 0.05
LR = 1e-3


def main(seed=0, compile=False, initial_state=None, episodes=12):
    torch.manual_seed(seed)
    random.seed(seed)
    env = Corridor()
    policy_net = DQN(3, 2)
    target_net = DQN(3, 2)
    if initial_state is not None:
        policy_net.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in policy_net.state_dict().items()}
    target_net.load_state_dict(policy_net.state_dict())
    optimizer = optim.AdamW(policy_net.parameters(), lr=LR, amsgrad=True)
    memory = ReplayMemory(500)
    steps_done = 0
    losses, durations = [], []

    def select_action(state):
        nonlocal steps_done
        sample = random.random()
        eps_threshold = EPS_END + (EPS_START - EPS_END) * math.exp(-1. * steps_done / EPS_DECAY)
        steps_done += 1
        if sample > eps_threshold:
            with torch.no_grad():
                return policy_net(state).max(1).indices.view(1, 1)
        return torch.tensor([[random.randrange(2)]], dtype=torch.long)

    def optimize_model():
        if len(memory) < BATCH_SIZE:
            return
        transitions = memory.sample(BATCH_SIZE)
        batch = Transition(*zip(*transitions))
        non_final_mask = torch.tensor(tuple(map(lambda s: s is not None, batch.next_state)),
                                      dtype=torch.bool)
        non_final_next_states = torch.cat([s for s in batch.next_state if s is not None])
        state_batch = torch.cat(batch.state)
        action_batch = torch.cat(batch.action)
        reward_batch = torch.cat(batch.reward)
        state_action_values = policy_net(state_batch).gather(1, action_batch)
        next_state_values = torch.zeros(BATCH_SIZE)
        with torch.no_grad():
            next_state_values[non_final_mask] = target_net(non_final_next_states).max(1).values
        expected_state_action_values = (next_state_values * GAMMA) + reward_batch
        criterion = nn.SmoothL1Loss()
        loss = criterion(state_action_values, expected_state_action_values.unsqueeze(1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(policy_net.parameters(), 100)
        optimizer.step()
        losses.append(loss.item())

    for i_episode in range(episodes):
        state = torch.tensor(env.reset(), dtype=torch.float32).unsqueeze(0)
        for t in range(30):
            action = select_action(state)
            observation, reward, terminated = env.step(action.item())
            reward = torch.tensor([reward])
            next_state = None if terminated else \
                torch.tensor(observation, dtype=torch.float32).unsqueeze(0)
            memory.push(state, action, next_state, reward)
            state = next_state
            optimize_model()
            target_net_state_dict = target_net.state_dict()
            policy_net_state_dict = policy_net.state_dict()
            for key in policy_net_state_dict:
                target_net_state_dict[key] = policy_net_state_dict[key] * TAU + \
                    target_net_state_dict[key] * (1 - TAU)
            target_net.load_state_dict(target_net_state_dict)
            if terminated:
                break
        durations.append(t + 1)
    return {"losses": losses, "initial_state": initial, "durations": durations}


if __name__ == "__main__":
    print(main())
