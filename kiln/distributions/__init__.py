"""`kiln.distributions`: probability distributions with sampling, log-densities, entropies and
KL divergences (torch.distributions), built on kiln's tensor ops so log_prob, entropy and
rsample are differentiable in the parameters."""

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
