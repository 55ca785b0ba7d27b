"""`kiln.distributions`: probability distributions with sampling, log-densities, entropies and
KL divergences (torch.distributions), built on kiln's tensor ops so log_prob, entropy and
rsample are differentiable in the parameters."""

import sys as _sys
import types as _types

from kiln.distributions import constraints  # noqa: F401
from kiln.distributions.distribution import Distribution  # noqa: F401
from kiln.distributions.continuous import (Beta, Dirichlet, Exponential, Gamma,  # noqa: F401
                                           Laplace, LogNormal, MultivariateNormal, Normal,
                                           Uniform)
from kiln.distributions.discrete import (Bernoulli, Binomial, Categorical,  # noqa: F401
                                         OneHotCategorical, Poisson)
from kiln.distributions.transformed import (AffineTransform, ComposeTransform,  # noqa: F401
                                            ExpTransform, Independent, SigmoidTransform,
                                            TanhTransform, Transform, TransformedDistribution)
from kiln.distributions.transformed import (AbsTransform, PowerTransform,  # noqa: F401
                                            SoftmaxTransform, SoftplusTransform,
                                            identity_transform, StickBreakingTransform,
                                            LowerCholeskyTransform, PositiveDefiniteTransform,
                                            CumulativeDistributionTransform,
                                            IndependentTransform, ReshapeTransform,
                                            CatTransform, StackTransform, biject_to,
                                            transform_to, LogisticNormal,
                                            CorrCholeskyTransform)
from kiln.distributions.more import (Cauchy, Chi2, Geometric, Gumbel, HalfCauchy,  # noqa: F401
                                     HalfNormal, InverseGamma, MixtureSameFamily, Multinomial,
                                     NegativeBinomial, Pareto, StudentT, Weibull)
from kiln.distributions.relaxed import (ContinuousBernoulli, ExpRelaxedCategorical,  # noqa: F401
                                        FisherSnedecor, LKJCholesky, Wishart,
                                        GeneralizedPareto, Kumaraswamy, LogitRelaxedBernoulli,
                                        LowRankMultivariateNormal,
                                        OneHotCategoricalStraightThrough, RelaxedBernoulli,
                                        RelaxedOneHotCategorical, VonMises)
from kiln.distributions.kl import kl_divergence, register_kl  # noqa: F401

ExponentialFamily = Distribution

# PyTorch's file names (`from torch.distributions.categorical import Categorical`, as RL code
# writes it): each a module holding the classes PyTorch defines in that file
_TORCH_FILES = {
    "bernoulli": ("Bernoulli",), "beta": ("Beta",), "binomial": ("Binomial",),
    "categorical": ("Categorical",), "cauchy": ("Cauchy",), "chi2": ("Chi2",),
    "constraint_registry": ("biject_to", "transform_to"),
    "continuous_bernoulli": ("ContinuousBernoulli",), "dirichlet": ("Dirichlet",),
    "distribution": ("Distribution",), "exp_family": ("ExponentialFamily",),
    "exponential": ("Exponential",), "fishersnedecor": ("FisherSnedecor",), "gamma": ("Gamma",),
    "generalized_pareto": ("GeneralizedPareto",), "geometric": ("Geometric",),
    "gumbel": ("Gumbel",), "half_cauchy": ("HalfCauchy",), "half_normal": ("HalfNormal",),
    "independent": ("Independent",), "inverse_gamma": ("InverseGamma",),
    "kumaraswamy": ("Kumaraswamy",), "laplace": ("Laplace",), "lkj_cholesky": ("LKJCholesky",),
    "log_normal": ("LogNormal",), "logistic_normal": ("LogisticNormal",),
    "lowrank_multivariate_normal": ("LowRankMultivariateNormal",),
    "mixture_same_family": ("MixtureSameFamily",), "multinomial": ("Multinomial",),
    "multivariate_normal": ("MultivariateNormal",), "negative_binomial": ("NegativeBinomial",),
    "normal": ("Normal",), "one_hot_categorical": ("OneHotCategorical",
                                                   "OneHotCategoricalStraightThrough"),
    "pareto": ("Pareto",), "poisson": ("Poisson",),
    "relaxed_bernoulli": ("LogitRelaxedBernoulli", "RelaxedBernoulli"),
    "relaxed_categorical": ("ExpRelaxedCategorical", "RelaxedOneHotCategorical"),
    "studentT": ("StudentT",), "transformed_distribution": ("TransformedDistribution",),
    "transforms": ("AbsTransform", "AffineTransform", "CatTransform", "ComposeTransform",
                   "CorrCholeskyTransform", "CumulativeDistributionTransform", "ExpTransform",
                   "IndependentTransform", "LowerCholeskyTransform", "PositiveDefiniteTransform",
                   "PowerTransform", "ReshapeTransform", "SigmoidTransform", "SoftplusTransform",
                   "TanhTransform", "SoftmaxTransform", "StackTransform",
                   "StickBreakingTransform", "Transform", "identity_transform"),
    "uniform": ("Uniform",), "von_mises": ("VonMises",), "weibull": ("Weibull",),
    "wishart": ("Wishart",),
}


def _install_torch_files() -> None:
    package = _sys.modules[__name__]
    for file, names in _TORCH_FILES.items():
        full = f"{__name__}.{file}"
        if full in _sys.modules:        # a real kiln file of that name (distribution)
            continue
        module = _types.ModuleType(full, f"`torch.distributions.{file}` import path.")
        module.__all__ = list(names)
        for name in names:
            setattr(module, name, getattr(package, name))
        _sys.modules[full] = module
        setattr(package, file, module)


_install_torch_files()
