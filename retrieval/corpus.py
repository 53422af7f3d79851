"""Real text corpora no one in the project wrote, so retrieval quality measured on them is honest.

* :func:`stdlib_corpus`: the standard library's docstrings (ships with every Python); the
  demo and the tests index it.
* :func:`scientific_corpus`: ~2,500 docstrings of numpy, SciPy and scikit-learn (installed
  from PyPI with the project): the held-out corpus of ``python -m bench retrieval``.

Each document follows the ``docs`` contract.

>>> docs = stdlib_corpus(5)
>>> len(docs), docs[0]["op"], docs[0]["id"].count(".") >= 1
(5, 'upsert', True)

Long because it is data: the shipped corpora and their question sets, with the few
functions that read them.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from typing import Any

__all__ = [
    "SCIENTIFIC_MODULES",
    "SCIENTIFIC_QUESTIONS",
    "STDLIB_MODULES",
    "scientific_corpus",
    "stdlib_corpus",
]

STDLIB_MODULES = (
    "json", "csv", "heapq", "bisect", "collections", "functools", "itertools", "pathlib",
    "shutil", "tempfile", "logging", "argparse", "subprocess", "threading", "queue",
    "socket", "sqlite3", "zipfile", "tarfile", "gzip", "hashlib", "hmac", "secrets",
    "random", "statistics", "decimal", "fractions", "datetime", "calendar", "textwrap",
    "difflib", "string", "re", "struct", "codecs", "uuid", "urllib.parse", "http.client",
    "email.message", "xml.etree.ElementTree", "contextlib", "dataclasses", "enum", "typing",
    "asyncio.queues", "concurrent.futures", "multiprocessing.pool", "pickle", "copy",
    "pprint", "operator", "weakref", "abc", "io", "os.path", "glob", "fnmatch", "sched",
)  # fmt: skip


def stdlib_corpus(limit: int = 400, min_chars: int = 200) -> list[dict[str, Any]]:
    """Docstrings of public classes and functions of :data:`STDLIB_MODULES`, as docs records.

    Deterministic for a given Python version: modules in a fixed order, names sorted,
    duplicate docstrings (aliases) dropped.
    """
    docs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            if len(doc) < min_chars or doc in seen:
                continue
            seen.add(doc)
            doc_id = f"{name}.{attr}"
            docs.append(
                {
                    "id": doc_id,
                    "op": "upsert",
                    "text": doc,
                    "title": doc_id,
                    "source": name,
                    "meta": {"module": name, "kind": type(obj).__name__},
                }
            )
            if len(docs) >= limit:
                return docs
    return docs


#: Modules whose public docstrings make :func:`scientific_corpus` (numpy, SciPy and
#: scikit-learn: installed from PyPI with the project, written by their authors, not by us).
SCIENTIFIC_MODULES = (
    "numpy numpy.linalg numpy.fft numpy.random numpy.ma numpy.polynomial.polynomial "
    "scipy.linalg scipy.stats scipy.optimize scipy.signal scipy.sparse scipy.sparse.linalg "
    "scipy.sparse.csgraph scipy.interpolate scipy.integrate scipy.special scipy.spatial "
    "scipy.spatial.distance scipy.ndimage scipy.cluster.hierarchy scipy.cluster.vq scipy.fft "
    "scipy.io scipy.constants scipy.odr "
    "sklearn.linear_model sklearn.ensemble sklearn.tree sklearn.svm sklearn.neighbors "
    "sklearn.cluster sklearn.decomposition sklearn.preprocessing sklearn.metrics "
    "sklearn.model_selection sklearn.feature_extraction.text sklearn.feature_selection "
    "sklearn.pipeline sklearn.compose sklearn.impute sklearn.manifold sklearn.mixture "
    "sklearn.naive_bayes sklearn.neural_network sklearn.covariance sklearn.cross_decomposition "
    "sklearn.discriminant_analysis sklearn.gaussian_process sklearn.isotonic "
    "sklearn.kernel_approximation sklearn.kernel_ridge sklearn.multiclass sklearn.multioutput "
    "sklearn.random_projection sklearn.semi_supervised sklearn.calibration sklearn.datasets "
    "sklearn.inspection sklearn.utils"
).split()

# numpydoc sections after which a docstring is reference material (citations) or code.
_TAIL_SECTION = re.compile(r"^(Examples|References)\n-{3,}[ \t]*$", re.M)


def _docstring_text(doc: str, max_chars: int) -> str:
    """The docstring without its Examples/References tail, cut at a line under ``max_chars``.

    >>> _docstring_text("Sum.\\n\\nExamples\\n--------\\n>>> 1 + 1\\n2", 100)
    'Sum.'
    >>> _docstring_text("one line\\nsecond line", 12)
    'one line'
    """
    tail = _TAIL_SECTION.search(doc)
    text = (doc[: tail.start()] if tail else doc).strip()
    if len(text) > max_chars:
        cut = text.rfind("\n", 0, max_chars)
        text = text[: cut if cut > 0 else max_chars].rstrip()
    return text


def scientific_corpus(
    limit: int | None = None, min_chars: int = 200, max_chars: int = 2000
) -> list[dict[str, Any]]:
    """Docstrings of the public API of numpy, SciPy and scikit-learn, as ``docs`` records.

    About 2,500 documents: every public function, class and callable of
    :data:`SCIENTIFIC_MODULES` with a docstring of at least ``min_chars`` characters, without
    its Examples and References sections, cut at a line boundary to ``max_chars``. The id is
    ``<module>.<name>`` (``numpy.argsort``); a docstring seen under an earlier module (an alias,
    a re-export) is kept once, under the first. Deterministic for given package versions.

    >>> docs = scientific_corpus(3)
    >>> [d["id"] for d in docs], docs[0]["meta"]["package"]
    (['numpy.abs', 'numpy.acos', 'numpy.acosh'], 'numpy')
    """
    docs: list[dict[str, Any]] = []
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases warn when touched
        for name in SCIENTIFIC_MODULES:
            module = importlib.import_module(name)
            public = getattr(module, "__all__", None) or dir(module)
            for attr in sorted({a for a in public if not a.startswith("_")}):
                try:
                    obj = getattr(module, attr)
                except Exception:  # lazy attributes that refuse to load (experimental ones)
                    continue
                if inspect.ismodule(obj) or not callable(obj):
                    continue
                doc = inspect.getdoc(obj) or ""
                if len(doc) < min_chars or doc in seen:
                    continue
                seen.add(doc)
                doc_id = f"{name}.{attr}"
                docs.append(
                    {
                        "id": doc_id,
                        "op": "upsert",
                        "text": _docstring_text(doc, max_chars),
                        "title": doc_id,
                        "source": name,
                        "meta": {"package": name.split(".")[0], "kind": type(obj).__name__},
                    }
                )
                if limit is not None and len(docs) >= limit:
                    return docs
    return docs


#: Hand-written questions about :func:`scientific_corpus`, each answered by one document (its
#: id). They say what a user wants in their own words rather than quoting the docstring;
#: established names (Brent's method, Student's t-test, MATLAB) are kept where a user would
#: use them too. Written for this evaluation; none is used to tune anything but the defaults
#: of ``LIVELEARN_RETRIEVAL__*``.
SCIENTIFIC_QUESTIONS: dict[str, str] = {
    # numpy
    "Which positions would put my array in ascending order if I read it through them?": (
        "numpy.argsort"
    ),
    "Running total of the entries of an array, one value after another": "numpy.cumsum",
    "A fixed count of points placed at equal distance between a start and a stop value": (
        "numpy.linspace"
    ),
    "Build coordinate grids from two 1-D axis vectors for evaluating a function on a plane": (
        "numpy.meshgrid"
    ),
    "Limit every entry of an array so it stays between a lower and an upper bound": "numpy.clip",
    "Where should new values go in an already ordered array so that it stays ordered?": (
        "numpy.searchsorted"
    ),
    "Count how many values fall into each of a set of equal-width intervals": "numpy.histogram",
    "Fill in values between known sample points with straight line segments": "numpy.interp",
    "Find polynomial coefficients that best match noisy points in the least-squares sense": (
        "numpy.polyfit"
    ),
    "Add a border of zeros or mirrored values around an image array": "numpy.pad",
    "Lay copies of an array side by side several times to make a bigger one": "numpy.tile",
    "Differences between each element and the one before it, possibly applied several times": (
        "numpy.diff"
    ),
    "Swap missing-number markers and infinities for usable finite numbers": "numpy.nan_to_num",
    "How often does each small non-negative integer occur in my list?": "numpy.bincount",
    "Put each value into the bucket index it belongs to given bucket edges": "numpy.digitize",
    "Value below which ninety percent of my measurements lie": "numpy.percentile",
    "Pearson correlation matrix of several variables": "numpy.corrcoef",
    "Shift the entries of an array cyclically so the last ones wrap around to the front": (
        "numpy.roll"
    ),
    "Turn a picture array a quarter turn": "numpy.rot90",
    "Drop the dimensions that have size one from an array's shape": "numpy.squeeze",
    "Join arrays of the same shape along a brand-new axis": "numpy.stack",
    "Break an array into pieces when the length does not divide evenly": "numpy.array_split",
    "Elements common to two arrays, without duplicates": "numpy.intersect1d",
    "Items of the first array that the second one lacks": "numpy.setdiff1d",
    "Return the distinct values of an array, optionally with how many times each appears": (
        "numpy.unique"
    ),
    "Sort records by several columns, the last key being the primary one": "numpy.lexsort",
    (
        "Reorder so the k-th item is where it would be when sorted, with smaller ones before "
        "it, without a full sort"
    ): "numpy.partition",
    "Keep only the part of a matrix on and above its main diagonal": "numpy.triu",
    "Matrix whose columns are successive powers of an input vector": "numpy.vander",
    "Read a table of numbers from a CSV where some cells are empty": "numpy.genfromtxt",
    "Write several arrays into one archive file on disk without compression": "numpy.savez",
    "Access a huge array stored on disk without reading all of it into RAM": "numpy.memmap",
    "Numbers that grow by a constant ratio from one endpoint to the other": "numpy.geomspace",
    "Unpack a byte array into individual zero and one values": "numpy.unpackbits",
    "How many entries of an array are not zero?": "numpy.count_nonzero",
    "Choose values from several arrays according to a list of boolean conditions": "numpy.select",
    "Define a function by different formulas on different parts of its domain": "numpy.piecewise",
    "Make a plain Python function work element by element over arrays": "numpy.vectorize",
    "Apply my own function to every one-dimensional slice along a chosen axis": (
        "numpy.apply_along_axis"
    ),
    "Tapering window for spectral analysis with an adjustable shape parameter beta": "numpy.kaiser",
    "Compute the length of the long side of a right triangle from the two short sides": (
        "numpy.hypot"
    ),
    "Numerically stable log of exp(a) plus exp(b)": "numpy.logaddexp",
    "Block matrix built by multiplying every entry of one matrix with all of another": "numpy.kron",
    "Remove the jumps of 2 pi from a sequence of phase angles": "numpy.unwrap",
    "Mean of an array that skips missing values": "numpy.nanmean",
    "Range between the largest and smallest value along an axis": "numpy.ptp",
    "Remove the leading and trailing zeros of a sequence": "numpy.trim_zeros",
    "Tensor contractions written with subscript labels like 'ij,jk->ik'": "numpy.einsum",
    "Broadcast an array to a bigger shape as a read-only view without copying": (
        "numpy.broadcast_to"
    ),
    "Spacing-aware numerical derivative of sampled values using central differences": (
        "numpy.gradient"
    ),
    "Area under sampled data computed with straight segments between the samples": (
        "numpy.trapezoid"
    ),
    # scipy.linalg
    "Exponential of a square matrix, as used for linear differential equations": (
        "scipy.linalg.expm"
    ),
    "Basis vectors spanning all x with A x equal to zero": "scipy.linalg.null_space",
    "Factor a symmetric positive definite matrix into a lower triangle times its transpose": (
        "scipy.linalg.cholesky"
    ),
    "Matrix whose every row is the previous row shifted one step to the right, wrapping around": (
        "scipy.linalg.circulant"
    ),
    "Solve a linear system whose matrix has nonzeros only on a few diagonals near the main one": (
        "scipy.linalg.solve_banded"
    ),
    "Matrix B such that B times B gives back my matrix": "scipy.linalg.sqrtm",
    "Split a matrix into a unitary factor and a positive semidefinite Hermitian factor": (
        "scipy.linalg.polar"
    ),
    "Moore-Penrose generalized inverse of a non-square matrix": "scipy.linalg.pinv",
    # scipy.stats
    "Do two independent groups of measurements have the same average? Student's test": (
        "scipy.stats.ttest_ind"
    ),
    "Rank-based correlation that measures monotonic association": "scipy.stats.spearmanr",
    "Nonparametric test comparing two independent samples by ranks, alternative to the t-test": (
        "scipy.stats.mannwhitneyu"
    ),
    "Test whether my sample looks normally distributed, good for small samples": (
        "scipy.stats.shapiro"
    ),
    "Are the row and column variables of a cross-tabulation of counts independent?": (
        "scipy.stats.chi2_contingency"
    ),
    "Smooth estimate of a probability density from samples using bell-shaped kernels": (
        "scipy.stats.gaussian_kde"
    ),
    "Standardize values by subtracting the mean and dividing by the spread": "scipy.stats.zscore",
    "Fit a straight line to two sets of measurements and get slope, intercept and r value": (
        "scipy.stats.linregress"
    ),
    "Compare the means of three or more groups with analysis of variance": "scipy.stats.f_oneway",
    "Exact test of association for a 2 by 2 table with small counts": "scipy.stats.fisher_exact",
    "Resample my data with replacement to get a confidence interval of a statistic": (
        "scipy.stats.bootstrap"
    ),
    "Average after discarding a proportion of the most extreme values at both ends": (
        "scipy.stats.trim_mean"
    ),
    "Earth mover's distance between two one-dimensional distributions": (
        "scipy.stats.wasserstein_distance"
    ),
    "Robust spread: median of the absolute deviations from the median": (
        "scipy.stats.median_abs_deviation"
    ),
    "Spread between the 25th and 75th percentiles of the data": "scipy.stats.iqr",
    "Test whether several groups have equal variances, robust to non-normal data": (
        "scipy.stats.levene"
    ),
    "Nth root of the product of the values, i.e. the multiplicative average": "scipy.stats.gmean",
    # scipy.optimize
    "Fit the parameters of my model function to data points with nonlinear least squares": (
        "scipy.optimize.curve_fit"
    ),
    (
        "Find where a function crosses zero inside an interval where it changes sign, with "
        "Brent's algorithm"
    ): "scipy.optimize.brentq",
    "Optimal one-to-one matching of workers to jobs minimizing total cost (Hungarian problem)": (
        "scipy.optimize.linear_sum_assignment"
    ),
    "Minimize a linear cost subject to linear equality and inequality constraints": (
        "scipy.optimize.linprog"
    ),
    "Least squares with the requirement that every coefficient is non-negative": (
        "scipy.optimize.nnls"
    ),
    "Global optimizer that evolves a population of candidate solutions": (
        "scipy.optimize.differential_evolution"
    ),
    "Verify that my analytic derivative matches a finite-difference estimate": (
        "scipy.optimize.check_grad"
    ),
    "Optimization problem with some variables restricted to integer values": "scipy.optimize.milp",
    # scipy.signal
    "Design a maximally flat low-pass IIR filter of a given order": "scipy.signal.butter",
    "Filter a signal forwards and then backwards so there is no phase distortion": (
        "scipy.signal.filtfilt"
    ),
    "Locate the local maxima in a 1-D signal, with conditions on height and distance": (
        "scipy.signal.find_peaks"
    ),
    "Power spectral density estimated by averaging overlapping windowed segments": (
        "scipy.signal.welch"
    ),
    "Smooth noisy data by fitting low-degree polynomials in a sliding window": (
        "scipy.signal.savgol_filter"
    ),
    "Remove a best-fit straight line from a signal": "scipy.signal.detrend",
    "Analytic signal of a real signal, for extracting its envelope": "scipy.signal.hilbert",
    "Reduce the sampling rate of a signal after low-pass filtering to avoid aliasing": (
        "scipy.signal.decimate"
    ),
    "Suppress one narrow frequency, like 50 Hz mains hum, with a second-order filter": (
        "scipy.signal.iirnotch"
    ),
    "Spectrum of unevenly sampled time series data": "scipy.signal.lombscargle",
    "Sinusoid whose frequency sweeps over time between two values": "scipy.signal.chirp",
    "Linear-phase finite impulse response filter coefficients designed with a window": (
        "scipy.signal.firwin"
    ),
    # scipy.interpolate / integrate
    "Interpolating curve that never overshoots and keeps the data's monotonicity": (
        "scipy.interpolate.PchipInterpolator"
    ),
    "Interpolate scattered points in several dimensions using radial basis functions": (
        "scipy.interpolate.RBFInterpolator"
    ),
    "Interpolate values given on an irregular cloud of 2-D points onto a regular grid": (
        "scipy.interpolate.griddata"
    ),
    "Numerically integrate a function of one variable between two limits, adaptively": (
        "scipy.integrate.quad"
    ),
    (
        "Integrate a system of ODEs forward in time from starting values, with a choice of "
        "Runge-Kutta and stiff methods"
    ): "scipy.integrate.solve_ivp",
    "Solve a differential equation whose conditions are given at both ends of an interval": (
        "scipy.integrate.solve_bvp"
    ),
    "Integral over a two-dimensional region whose inner limits depend on the outer variable": (
        "scipy.integrate.dblquad"
    ),
    # scipy.spatial / ndimage / cluster / special / sparse / fft / io / constants
    "Tree structure for fast queries of the closest points to a location": "scipy.spatial.KDTree",
    "Smallest convex polygon or polytope enclosing a set of points": "scipy.spatial.ConvexHull",
    "Triangulate a set of points so no point lies inside any triangle's circumcircle": (
        "scipy.spatial.Delaunay"
    ),
    "Distances between every pair of rows taken from two different sets of points": (
        "scipy.spatial.distance.cdist"
    ),
    "Convert a condensed vector of pairwise distances into a full symmetric matrix and back": (
        "scipy.spatial.distance.squareform"
    ),
    "Distance that accounts for correlations using an inverse covariance matrix": (
        "scipy.spatial.distance.mahalanobis"
    ),
    "Blur an image with a bell-shaped smoothing kernel": "scipy.ndimage.gaussian_filter",
    "Give each connected blob of nonzero pixels in a binary image its own integer id": (
        "scipy.ndimage.label"
    ),
    "For every foreground pixel, how far is the nearest background pixel?": (
        "scipy.ndimage.distance_transform_edt"
    ),
    "Close the gaps inside shapes of a binary image": "scipy.ndimage.binary_fill_holes",
    "Build a tree of merges by agglomerative clustering from observations": (
        "scipy.cluster.hierarchy.linkage"
    ),
    "Draw a tree diagram of a hierarchical clustering": "scipy.cluster.hierarchy.dendrogram",
    "Cut a hierarchical clustering tree into flat groups": "scipy.cluster.hierarchy.fcluster",
    "Number of ways to choose k items from n without order": "scipy.special.comb",
    "Logistic sigmoid, one over one plus exp of minus x": "scipy.special.expit",
    "Stable log of a sum of exponentials, avoiding overflow": "scipy.special.logsumexp",
    "Turn a vector of scores into probabilities that add up to one": "scipy.special.softmax",
    "Solve w times exp(w) equals z for w": "scipy.special.lambertw",
    "Natural log of the absolute value of the gamma function for large arguments": (
        "scipy.special.gammaln"
    ),
    "Sparse matrix format good for fast row slicing and matrix-vector products": (
        "scipy.sparse.csr_matrix"
    ),
    "Build a sparse matrix from a handful of diagonals": "scipy.sparse.diags",
    "Solve a large sparse linear system directly": "scipy.sparse.linalg.spsolve",
    "A few largest eigenvalues of a big symmetric sparse matrix": "scipy.sparse.linalg.eigsh",
    (
        "Truncated singular value decomposition of a large sparse matrix, only the top k "
        "singular values"
    ): "scipy.sparse.linalg.svds",
    "Iterative solver for symmetric positive definite systems Ax = b": "scipy.sparse.linalg.cg",
    "Shortest routes between nodes of a weighted graph stored as a matrix": (
        "scipy.sparse.csgraph.shortest_path"
    ),
    "Cheapest set of edges that links all vertices of a graph without cycles": (
        "scipy.sparse.csgraph.minimum_spanning_tree"
    ),
    "How many separate pieces does my graph have, and which node is in which?": (
        "scipy.sparse.csgraph.connected_components"
    ),
    "Frequencies in cycles per unit corresponding to each bin of a discrete Fourier transform": (
        "scipy.fft.fftfreq"
    ),
    "Move the zero frequency to the middle of the spectrum array": "scipy.fft.fftshift",
    "Best array size for zero padding to make the FFT run fast": "scipy.fft.next_fast_len",
    "Open a .mat file created by MATLAB": "scipy.io.loadmat",
    "Change a temperature from Fahrenheit to Celsius or Kelvin": (
        "scipy.constants.convert_temperature"
    ),
    # sklearn
    "Linear model with an L1 penalty that drives many coefficients to exactly zero": (
        "sklearn.linear_model.Lasso"
    ),
    "Regression that is robust to outliers by fitting on random consensus subsets": (
        "sklearn.linear_model.RANSACRegressor"
    ),
    "Model for predicting counts with a log link": "sklearn.linear_model.PoissonRegressor",
    "Predict conditional medians or other quantiles with a linear model": (
        "sklearn.linear_model.QuantileRegressor"
    ),
    "Fast boosted trees that bin the features into histograms, handling missing values natively": (
        "sklearn.ensemble.HistGradientBoostingClassifier"
    ),
    "Detect anomalies by how quickly random splits isolate a sample": (
        "sklearn.ensemble.IsolationForest"
    ),
    "Combine several fitted classifiers by majority or averaged probabilities": (
        "sklearn.ensemble.VotingClassifier"
    ),
    "Print the rules of a fitted decision tree as plain text": "sklearn.tree.export_text",
    "Outlier score based on how isolated a point is compared to the density of its neighbours": (
        "sklearn.neighbors.LocalOutlierFactor"
    ),
    "Density-based clustering that groups closely packed points and marks sparse ones as noise": (
        "sklearn.cluster.DBSCAN"
    ),
    "Clustering of very large data with small random batches of samples": (
        "sklearn.cluster.MiniBatchKMeans"
    ),
    "Factor a non-negative data matrix into two non-negative matrices": "sklearn.decomposition.NMF",
    "Topic model for documents with Dirichlet priors": (
        "sklearn.decomposition.LatentDirichletAllocation"
    ),
    "Dimensionality reduction of a sparse term matrix without centering it first": (
        "sklearn.decomposition.TruncatedSVD"
    ),
    "Turn categorical columns into binary indicator columns": "sklearn.preprocessing.OneHotEncoder",
    "Scale features using the median and interquartile range so outliers matter less": (
        "sklearn.preprocessing.RobustScaler"
    ),
    "Map each feature to a uniform or normal distribution through its ranks": (
        "sklearn.preprocessing.QuantileTransformer"
    ),
    "Generate all products of features up to a given degree": (
        "sklearn.preprocessing.PolynomialFeatures"
    ),
    "Encode categories by the average of the target for that category, with cross fitting": (
        "sklearn.preprocessing.TargetEncoder"
    ),
    "Table of true versus predicted classes for evaluating a classifier": (
        "sklearn.metrics.confusion_matrix"
    ),
    "Area under the receiver operating characteristic curve from prediction scores": (
        "sklearn.metrics.roc_auc_score"
    ),
    (
        "Correlation-like score between predicted and true binary labels that works with "
        "imbalanced classes"
    ): "sklearn.metrics.matthews_corrcoef",
    "Agreement between two annotators corrected for chance": "sklearn.metrics.cohen_kappa_score",
    (
        "How well separated are my clusters: mean intra-cluster distance versus "
        "nearest-cluster distance"
    ): "sklearn.metrics.silhouette_score",
    "Similarity of two clusterings corrected for chance, counting pairs of samples": (
        "sklearn.metrics.adjusted_rand_score"
    ),
    "Text summary with precision, recall and F1 for each class": (
        "sklearn.metrics.classification_report"
    ),
    "Proportion of variance in the target that the regression predictions explain": (
        "sklearn.metrics.r2_score"
    ),
    "Exhaustively try every combination of hyperparameter values with cross-validation": (
        "sklearn.model_selection.GridSearchCV"
    ),
    "Cross-validation splits for time-ordered data where training always comes before testing": (
        "sklearn.model_selection.TimeSeriesSplit"
    ),
    "Folds that keep the proportion of each class the same in every split": (
        "sklearn.model_selection.StratifiedKFold"
    ),
    "Randomly divide arrays into a training part and a held-out part": (
        "sklearn.model_selection.train_test_split"
    ),
    "Word counts for a collection of text documents as a sparse matrix": (
        "sklearn.feature_extraction.text.CountVectorizer"
    ),
    "Vectorize text with a hashing trick so no vocabulary is stored in memory": (
        "sklearn.feature_extraction.text.HashingVectorizer"
    ),
    "Recursively drop the weakest features according to a model's importances": (
        "sklearn.feature_selection.RFE"
    ),
}
