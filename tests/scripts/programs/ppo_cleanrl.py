"""A CleanRL-style PPO (ppo.py's discrete-action agent) on a tiny vectorised bandit-like
environment in NumPy: `layer_init` with `nn.init.orthogonal_` and gains, a `Categorical` policy
(sample, log_prob, entropy), rollout buffers filled under `no_grad`, GAE computed backwards over
the buffer, clipped surrogate and clipped value loss, minibatches drawn with `torch.randperm`,
`clip_grad_norm_`, the learning rate annealed through `param_groups`, approx-KL and clip
fraction logged with `.item()`. The minibatch update is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.distributions.categorical import Categorical


class ToyEnv:
    """num_envs copies: the observation is a one-hot of a hidden target and some noise; the
    action matching the target pays 1; an episode lasts 5 steps."""

    def __init__(self, num_envs, obs_dim=6, n_actions=3, seed=0):
        self.rng = np.random.default_rng(seed)
        self.num_envs, self.obs_dim, self.n_actions = num_envs, obs_dim, n_actions
        self.t = np.zeros(num_envs, dtype=np.int64)

    def _observe(self):
        self.target = self.rng.integers(0, self.n_actions, self.num_envs)
        obs = 0.1 * self.rng.normal(size=(self.num_envs, self.obs_dim))
        obs[np.arange(self.num_envs), self.target] += 1.0
        return obs.astype(np.float32)

    def reset(self):
        self.t[:] = 0
        return self._observe()

    def step(self, action):
        reward = (action == self.target).astype(np.float32)
        self.t += 1
        done = self.t >= 5
        self.t[done] = 0
        return self._observe(), reward, done


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim, n_actions):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 16)), nn.Tanh(),
            layer_init(nn.Linear(16, 16)), nn.Tanh(),
            layer_init(nn.Linear(16, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 16)), nn.Tanh(),
            layer_init(nn.Linear(16, 16)), nn.Tanh(),
            layer_init(nn.Linear(16, n_actions), std=0.01),
        )

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, action=None):
        logits = self.actor(x)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    num_envs, num_steps, num_iterations = 4, 16, 3
    batch_size = num_envs * num_steps
    num_minibatches, update_epochs = 4, 2
    minibatch_size = batch_size // num_minibatches
    learning_rate, gamma, gae_lambda = 2.5e-3, 0.99, 0.95
    clip_coef, ent_coef, vf_coef, max_grad_norm = 0.2, 0.01, 0.5, 0.5

    envs = ToyEnv(num_envs, seed=seed)
    agent = Agent(envs.obs_dim, envs.n_actions)
    if initial_state is not None:
        agent.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in agent.state_dict().items()}
    optimizer = optim.Adam(agent.parameters(), lr=learning_rate, eps=1e-5)

    obs = torch.zeros((num_steps, num_envs, envs.obs_dim))
    actions = torch.zeros((num_steps, num_envs))
    logprobs = torch.zeros((num_steps, num_envs))
    rewards = torch.zeros((num_steps, num_envs))
    dones = torch.zeros((num_steps, num_envs))
    values = torch.zeros((num_steps, num_envs))

    def update(mb_obs, mb_actions, mb_logprobs, mb_advantages, mb_returns, mb_values):
        _, newlogprob, entropy, newvalue = agent.get_action_and_value(mb_obs, mb_actions.long())
        logratio = newlogprob - mb_logprobs
        ratio = logratio.exp()
        with torch.no_grad():
            approx_kl = ((ratio - 1) - logratio).mean()
            clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
        pg_loss1 = -mb_advantages * ratio
        pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
        pg_loss = torch.max(pg_loss1, pg_loss2).mean()
        newvalue = newvalue.view(-1)
        v_loss_unclipped = (newvalue - mb_returns) ** 2
        v_clipped = mb_values + torch.clamp(newvalue - mb_values, -clip_coef, clip_coef)
        v_loss_clipped = (v_clipped - mb_returns) ** 2
        v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
        entropy_loss = entropy.mean()
        loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
        optimizer.step()
        return loss.detach(), approx_kl, clipfrac

    if compile:
        update = torch.compile(update)

    next_obs = torch.Tensor(envs.reset())
    next_done = torch.zeros(num_envs)
    losses, kls, clipfracs, lrs, returns_log = [], [], [], [], []
    for iteration in range(1, num_iterations + 1):
        frac = 1.0 - (iteration - 1.0) / num_iterations
        lrnow = frac * learning_rate
        optimizer.param_groups[0]["lr"] = lrnow
        lrs.append(lrnow)
        for step in range(0, num_steps):
            obs[step] = next_obs
            dones[step] = next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob
            next_obs, reward, next_done = envs.step(action.cpu().numpy())
            rewards[step] = torch.tensor(reward).view(-1)
            next_obs, next_done = torch.Tensor(next_obs), torch.Tensor(next_done)
        returns_log.append(rewards.sum().item() / num_envs)

        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(num_steps)):
                if t == num_steps - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = (
                    delta + gamma * gae_lambda * nextnonterminal * lastgaelam)
            returns = advantages + values

        b_obs = obs.reshape((-1, envs.obs_dim))
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape(-1)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)
        for epoch in range(update_epochs):
            b_inds = torch.randperm(batch_size)
            for start in range(0, batch_size, minibatch_size):
                mb_inds = b_inds[start:start + minibatch_size]
                loss, approx_kl, clipfrac = update(
                    b_obs[mb_inds], b_actions[mb_inds], b_logprobs[mb_inds],
                    b_advantages[mb_inds], b_returns[mb_inds], b_values[mb_inds])
                losses.append(loss.item())
                kls.append(approx_kl.item())
                clipfracs.append(clipfrac.item())
        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

    values_out = {"actor_out": agent.actor[4].weight.detach().clone(),
                  "critic_in": agent.critic[0].weight.detach().clone(),
                  "approx_kl": torch.tensor(kls), "clipfracs": torch.tensor(clipfracs),
                  "episode_returns": torch.tensor(returns_log), "lrs": torch.tensor(lrs),
                  "explained_var": torch.tensor(float(explained_var)),
                  "adam_step": optimizer.state_dict()["state"][0]["step"]}
    return {"losses": losses, "values": values_out, "initial_state": initial}
