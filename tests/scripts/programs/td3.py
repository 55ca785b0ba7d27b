"""TD3 as the reference implementation (Fujimoto's TD3.py) and CleanRL's td3_continuous_action.py
write it, on a tiny pendulum-like environment in NumPy: a deterministic tanh actor and twin
critics, each with a target copy; target policy smoothing by clipped Gaussian noise
`(torch.randn_like(a) * 0.2).clamp(-0.5, 0.5)`, clipped double Q by `torch.min(q1, q2)`, the
actor and the targets updated every second critic step, Polyak averaging by
`target.data.copy_(tau * p.data + (1 - tau) * target.data)`, a replay buffer of NumPy arrays
sampled with a seeded generator. The update (critic, then the delayed actor and targets when
due) is the compiled function."""
import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SpinEnv:
    """A damped wheel pushed by a bounded torque; the reward prefers angle 0 and little effort."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def reset(self):
        self.t = 0
        self.state = self.rng.uniform(-1, 1, 2).astype(np.float32)      # angle, velocity
        return self.observe()

    def observe(self):
        theta, omega = self.state
        return np.array([np.cos(theta), np.sin(theta), omega], dtype=np.float32)

    def step(self, action):
        u = float(np.clip(action[0], -1, 1))
        theta, omega = self.state
        omega = np.clip(0.9 * omega - 0.3 * np.sin(theta) + 0.5 * u, -3, 3)
        theta = theta + 0.2 * omega
        self.state = np.array([theta, omega], dtype=np.float32)
        self.t += 1
        reward = -(theta ** 2 + 0.1 * omega ** 2 + 0.01 * u ** 2)
        return self.observe(), float(reward), self.t >= 12


class ReplayBuffer:
    def __init__(self, state_dim, action_dim, max_size, seed):
        self.max_size, self.ptr, self.size = max_size, 0, 0
        self.state = np.zeros((max_size, state_dim), np.float32)
        self.action = np.zeros((max_size, action_dim), np.float32)
        self.next_state = np.zeros((max_size, state_dim), np.float32)
        self.reward = np.zeros((max_size, 1), np.float32)
        self.not_done = np.zeros((max_size, 1), np.float32)
        self.rng = np.random.default_rng(seed)

    def add(self, state, action, next_state, reward, done):
        self.state[self.ptr] = state
        self.action[self.ptr] = action
        self.next_state[self.ptr] = next_state
        self.reward[self.ptr] = reward
        self.not_done[self.ptr] = 1.0 - done
        self.ptr = (self.ptr + 1) % self.max_size
        self.size = min(self.size + 1, self.max_size)

    def sample(self, batch_size):
        ind = self.rng.integers(0, self.size, size=batch_size)
        return (torch.FloatTensor(self.state[ind]), torch.FloatTensor(self.action[ind]),
                torch.FloatTensor(self.next_state[ind]), torch.FloatTensor(self.reward[ind]),
                torch.FloatTensor(self.not_done[ind]))


class Actor(nn.Module):
    def __init__(self, state_dim, action_dim, max_action):
        super().__init__()
        self.l1 = nn.Linear(state_dim, 32)
        self.l2 = nn.Linear(32, 32)
        self.l3 = nn.Linear(32, action_dim)
        self.max_action = max_action

    def forward(self, state):
        a = F.relu(self.l1(state))
        a = F.relu(self.l2(a))
        return self.max_action * torch.tanh(self.l3(a))


class Critic(nn.Module):
    def __init__(self, state_dim, action_dim):
        super().__init__()
        # Q1 architecture
        self.l1 = nn.Linear(state_dim + action_dim, 32)
        self.l2 = nn.Linear(32, 32)
        self.l3 = nn.Linear(32, 1)
        # Q2 architecture
        self.l4 = nn.Linear(state_dim + action_dim, 32)
        self.l5 = nn.Linear(32, 32)
        self.l6 = nn.Linear(32, 1)

    def forward(self, state, action):
        sa = torch.cat([state, action], 1)
        q1 = F.relu(self.l1(sa))
        q1 = F.relu(self.l2(q1))
        q1 = self.l3(q1)
        q2 = F.relu(self.l4(sa))
        q2 = F.relu(self.l5(q2))
        q2 = self.l6(q2)
        return q1, q2

    def Q1(self, state, action):
        sa = torch.cat([state, action], 1)
        q1 = F.relu(self.l1(sa))
        q1 = F.relu(self.l2(q1))
        return self.l3(q1)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    state_dim, action_dim, max_action = 3, 1, 1.0
    discount, tau, policy_noise, noise_clip, policy_freq = 0.99, 0.05, 0.2, 0.5, 2
    batch_size, start_steps = 32, 40
    env = SpinEnv(seed=4)
    replay_buffer = ReplayBuffer(state_dim, action_dim, 300, seed=9)
    explore_rng = np.random.default_rng(2)

    actor = Actor(state_dim, action_dim, max_action)
    critic = Critic(state_dim, action_dim)
    if initial_state is not None:
        actor.load_state_dict(initial_state["actor"])
        critic.load_state_dict(initial_state["critic"])
    initial = {"actor": {k: v.clone() for k, v in actor.state_dict().items()},
               "critic": {k: v.clone() for k, v in critic.state_dict().items()}}
    actor_target = copy.deepcopy(actor)
    critic_target = copy.deepcopy(critic)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=1e-3)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=3e-3)

    def critic_update(state, action, next_state, reward, not_done):
        with torch.no_grad():
            # select the action by the target policy, with clipped noise
            noise = (torch.randn_like(action) * policy_noise).clamp(-noise_clip, noise_clip)
            next_action = (actor_target(next_state) + noise).clamp(-max_action, max_action)
            target_q1, target_q2 = critic_target(next_state, next_action)
            target_q = torch.min(target_q1, target_q2)
            target_q = reward + not_done * discount * target_q
        current_q1, current_q2 = critic(state, action)
        critic_loss = F.mse_loss(current_q1, target_q) + F.mse_loss(current_q2, target_q)
        critic_optimizer.zero_grad()
        critic_loss.backward()
        critic_optimizer.step()
        return critic_loss

    def actor_update(state):
        actor_loss = -critic.Q1(state, actor(state)).mean()
        actor_optimizer.zero_grad()
        actor_loss.backward()
        actor_optimizer.step()
        # update the frozen target models
        for param, target_param in zip(critic.parameters(), critic_target.parameters()):
            target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)
        for param, target_param in zip(actor.parameters(), actor_target.parameters()):
            target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)
        return actor_loss

    if compile:
        critic_update = torch.compile(critic_update)
        actor_update = torch.compile(actor_update)

    losses, actor_losses, returns = [], [], []
    total_it = 0
    state, episode_reward = env.reset(), 0.0
    for t in range(100):
        if t < start_steps:
            action = explore_rng.uniform(-max_action, max_action, action_dim).astype(np.float32)
        else:
            with torch.no_grad():
                action = actor(torch.FloatTensor(state.reshape(1, -1))).numpy().flatten()
            action = (action + explore_rng.normal(0, 0.1 * max_action, action_dim)) \
                .clip(-max_action, max_action).astype(np.float32)
        next_state, reward, done = env.step(action)
        replay_buffer.add(state, action, next_state, reward, float(done))
        state = next_state
        episode_reward += reward
        if done:
            returns.append(episode_reward)
            state, episode_reward = env.reset(), 0.0
        if t >= start_steps:
            total_it += 1
            batch = replay_buffer.sample(batch_size)
            losses.append(critic_update(*batch).item())
            # delayed policy updates
            if total_it % policy_freq == 0:
                actor_losses.append(actor_update(batch[0]).item())

    with torch.no_grad():
        probe = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5], [-1.0, 0.0, -1.0]])
        greedy = actor(probe)
        q1, q2 = critic(probe, greedy)
        # the target policy's smoothing noise, clipped: how often it hits the clip
        noise = (torch.randn_like(torch.zeros(2000, action_dim)) * policy_noise) \
            .clamp(-noise_clip, noise_clip)
        target_gap = max((p - tp).abs().max() for p, tp in
                         zip(actor.parameters(), actor_target.parameters()))
    values = {"actor_losses": np.array(actor_losses), "returns": np.array(returns),
              "noise_at_clip": (noise.abs() == noise_clip).float().mean(),
              "noise_max": noise.abs().max(), "target_gap": target_gap,
              "greedy": greedy, "q1": q1, "q2": q2,
              "n_actor_updates": len(actor_losses),
              "actor_target": torch.cat([p.flatten() for p in actor_target.parameters()]),
              "critic_target": torch.cat([p.flatten() for p in critic_target.parameters()])}
    return {"losses": losses, "values": values, "initial_state": initial}
