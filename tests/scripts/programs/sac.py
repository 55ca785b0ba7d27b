"""A soft actor-critic as CleanRL's sac_continuous_action.py and its descendants write it, on a
tiny point-mass environment in NumPy: a squashed Gaussian actor (`Normal(mean, std).rsample()`,
`tanh`, the log-prob correction log(scale * (1 - tanh^2) + eps), log_std clamped), twin Q
networks with target copies, a learned temperature `log_alpha` with its own Adam, target
networks updated softly under `torch.no_grad` (`lerp_` for one, `mul_().add_()` for the other),
a NumPy replay buffer. The whole update (critic, actor, temperature, targets) is the compiled
function."""
import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

LOG_STD_MAX = 2
LOG_STD_MIN = -5


class PointEnv:
    """Move a point in the plane towards the origin; the reward is minus its squared distance."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def reset(self):
        self.t = 0
        self.pos = self.rng.uniform(-1, 1, 2).astype(np.float32)
        return self.pos.copy()

    def step(self, action):
        self.pos = np.clip(self.pos + 0.2 * action, -2, 2).astype(np.float32)
        self.t += 1
        reward = -float(np.sum(self.pos ** 2))
        return self.pos.copy(), reward, self.t >= 10


class ReplayBuffer:
    def __init__(self, size, obs_dim, act_dim, seed):
        self.obs = np.zeros((size, obs_dim), np.float32)
        self.next_obs = np.zeros((size, obs_dim), np.float32)
        self.actions = np.zeros((size, act_dim), np.float32)
        self.rewards = np.zeros((size, 1), np.float32)
        self.dones = np.zeros((size, 1), np.float32)
        self.size, self.ptr, self.full = size, 0, False
        self.rng = np.random.default_rng(seed)

    def add(self, obs, next_obs, action, reward, done):
        self.obs[self.ptr], self.next_obs[self.ptr] = obs, next_obs
        self.actions[self.ptr], self.rewards[self.ptr], self.dones[self.ptr] = action, reward, done
        self.ptr = (self.ptr + 1) % self.size
        self.full = self.full or self.ptr == 0

    def sample(self, batch_size):
        idx = self.rng.integers(0, self.size if self.full else self.ptr, batch_size)
        return (torch.from_numpy(self.obs[idx]), torch.from_numpy(self.actions[idx]),
                torch.from_numpy(self.next_obs[idx]), torch.from_numpy(self.rewards[idx]),
                torch.from_numpy(self.dones[idx]))


class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim, act_dim):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim + act_dim, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 1)

    def forward(self, x, a):
        x = torch.cat([x, a], 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class Actor(nn.Module):
    def __init__(self, obs_dim, act_dim):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc_mean = nn.Linear(32, act_dim)
        self.fc_logstd = nn.Linear(32, act_dim)
        # action rescaling: the environment's actions lie in [-1, 1]
        self.register_buffer("action_scale", torch.tensor(1.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor(0.0, dtype=torch.float32))

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        mean = self.fc_mean(x)
        log_std = self.fc_logstd(x)
        log_std = torch.clamp(log_std, LOG_STD_MIN, LOG_STD_MAX)
        return mean, log_std

    def get_action(self, x):
        mean, log_std = self(x)
        std = log_std.exp()
        normal = torch.distributions.Normal(mean, std)
        x_t = normal.rsample()  # reparameterization trick (mean + std * N(0,1))
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = normal.log_prob(x_t)
        # enforcing action bound
        log_prob -= torch.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6)
        log_prob = log_prob.sum(1, keepdim=True)
        mean = torch.tanh(mean) * self.action_scale + self.action_bias
        return action, log_prob, mean


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    obs_dim, act_dim = 2, 2
    gamma, tau, batch_size, learning_starts = 0.99, 0.05, 32, 40
    env = PointEnv(seed=11)
    rb = ReplayBuffer(200, obs_dim, act_dim, seed=5)
    action_rng = np.random.default_rng(7)

    actor = Actor(obs_dim, act_dim)
    qf1 = SoftQNetwork(obs_dim, act_dim)
    qf2 = SoftQNetwork(obs_dim, act_dim)
    log_alpha = torch.zeros(1, requires_grad=True)
    if initial_state is not None:
        actor.load_state_dict(initial_state["actor"])
        qf1.load_state_dict(initial_state["qf1"])
        qf2.load_state_dict(initial_state["qf2"])
        with torch.no_grad():
            log_alpha.copy_(initial_state["log_alpha"])
    initial = {"actor": {k: v.clone() for k, v in actor.state_dict().items()},
               "qf1": {k: v.clone() for k, v in qf1.state_dict().items()},
               "qf2": {k: v.clone() for k, v in qf2.state_dict().items()},
               "log_alpha": log_alpha.detach().clone()}
    qf1_target = copy.deepcopy(qf1)
    qf2_target = copy.deepcopy(qf2)
    q_optimizer = optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=3e-3)
    actor_optimizer = optim.Adam(list(actor.parameters()), lr=1e-3)
    target_entropy = -float(act_dim)
    a_optimizer = optim.Adam([log_alpha], lr=1e-2)

    def update(observations, actions, next_observations, rewards, dones, alpha):
        with torch.no_grad():
            next_state_actions, next_state_log_pi, _ = actor.get_action(next_observations)
            qf1_next_target = qf1_target(next_observations, next_state_actions)
            qf2_next_target = qf2_target(next_observations, next_state_actions)
            min_qf_next_target = torch.min(qf1_next_target, qf2_next_target) \
                - alpha * next_state_log_pi
            next_q_value = rewards.flatten() + \
                (1 - dones.flatten()) * gamma * min_qf_next_target.view(-1)
        qf1_a_values = qf1(observations, actions).view(-1)
        qf2_a_values = qf2(observations, actions).view(-1)
        qf1_loss = F.mse_loss(qf1_a_values, next_q_value)
        qf2_loss = F.mse_loss(qf2_a_values, next_q_value)
        qf_loss = qf1_loss + qf2_loss
        q_optimizer.zero_grad()
        qf_loss.backward()
        q_optimizer.step()

        pi, log_pi, _ = actor.get_action(observations)
        qf1_pi = qf1(observations, pi)
        qf2_pi = qf2(observations, pi)
        min_qf_pi = torch.min(qf1_pi, qf2_pi)
        actor_loss = ((alpha * log_pi) - min_qf_pi).mean()
        actor_optimizer.zero_grad()
        actor_loss.backward()
        actor_optimizer.step()

        with torch.no_grad():
            _, log_pi, _ = actor.get_action(observations)
        alpha_loss = (-log_alpha.exp() * (log_pi + target_entropy)).mean()
        a_optimizer.zero_grad()
        alpha_loss.backward()
        a_optimizer.step()

        # update the target networks
        with torch.no_grad():
            for param, target_param in zip(qf1.parameters(), qf1_target.parameters()):
                target_param.lerp_(param, tau)
            for param, target_param in zip(qf2.parameters(), qf2_target.parameters()):
                target_param.mul_(1 - tau).add_(param, alpha=tau)
        return qf_loss.detach(), actor_loss.detach(), alpha_loss.detach()

    if compile:
        update = torch.compile(update)

    losses, actor_losses, alphas, returns = [], [], [], []
    alpha = log_alpha.exp().item()
    obs, episode_return = env.reset(), 0.0
    for global_step in range(100):
        if global_step < learning_starts:
            action = action_rng.uniform(-1, 1, act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                action, _, _ = actor.get_action(torch.from_numpy(obs).unsqueeze(0))
            action = action[0].numpy()
        next_obs, reward, done = env.step(action)
        rb.add(obs, next_obs, action, reward, float(done))
        episode_return += reward
        obs = next_obs
        if done:
            returns.append(episode_return)
            obs, episode_return = env.reset(), 0.0
        if global_step >= learning_starts and global_step % 2 == 0:
            qf_loss, actor_loss, alpha_loss = update(*rb.sample(batch_size), alpha)
            alpha = log_alpha.exp().item()
            losses.append(qf_loss.item())
            actor_losses.append(actor_loss.item())
            alphas.append(log_alpha.exp().item())

    with torch.no_grad():
        probe = torch.tensor([[0.5, -0.5], [-1.0, 1.0]])
        _, _, greedy = actor.get_action(probe)
    values = {"actor_losses": np.array(actor_losses), "alphas": np.array(alphas),
              "returns": np.array(returns), "greedy": greedy,
              "qf1_target": torch.cat([p.flatten() for p in qf1_target.parameters()]),
              "qf2_target": torch.cat([p.flatten() for p in qf2_target.parameters()])}
    return {"losses": losses, "values": values, "initial_state": initial}
