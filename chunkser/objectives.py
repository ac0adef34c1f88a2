"""What a model predicts and how it is judged: one objective per kind of target, shared by training.py, testing.py
and predict.py.

An objective owns the label-table columns it reads and how labels become targets, the output width, the loss, the
validation metric and its direction, how outputs become results, the lines testing.py prints and the columns its
--out and predict.py write. A ModelSpec names it (`emo`: 'Act', 'ActValDom', 'Class'; `classes`: the classes in
order), so a checkpoint's JSON rebuilds it (objective_of).
"""
import numpy as np

from .corpus import CSV_ORDER, LABEL_COLUMN, require_rows
from .utils import UserError, cc_coef, evaluation_metrics

CHALLENGE_CLASSES = ('A', 'S', 'H', 'U', 'F', 'D', 'C', 'N')  # the MSP-Podcast challenge's eight, in its order
CLASS_NAMES = {'A': 'angry', 'S': 'sad', 'H': 'happy', 'U': 'surprise', 'F': 'fear', 'D': 'disgust', 'C': 'contempt',
               'N': 'neutral', 'O': 'other', 'X': 'no agreement', 'R': 'relaxed (the demo corpus\'s own letter)'}
CLASS = 'Class'


def emo_token(values):
    """-emo as given (['Dom'], ['Dom', 'Act'], ['Class']) -> the name of the targets: 'Dom', 'ActDom', 'Class'."""
    values = [values] if isinstance(values, str) else list(values)
    if CLASS in values:
        if len(values) > 1:
            raise UserError(f'-emo {" ".join(values)}: Class is a task of its own, not combined with attributes')
        return CLASS
    for v in values:
        if v not in CSV_ORDER:
            raise UserError(f'-emo {v}: expected Act, Val, Dom (one or several) or Class')
    if len(set(values)) != len(values):
        raise UserError(f'-emo {" ".join(values)}: an attribute given twice')
    return ''.join(a for a in CSV_ORDER if a in values)


def attributes_of(emo):
    """'ActValDom' -> ('Act', 'Val', 'Dom'); 'Class' -> ()."""
    if emo == CLASS:
        return ()
    out, rest = [], emo or ''
    while rest:
        if rest[:3] not in CSV_ORDER or rest[:3] in out:
            raise UserError(f'emo {emo!r}: expected Act, Val, Dom joined in that order, or Class')
        out.append(rest[:3])
        rest = rest[3:]
    if not out:
        raise UserError(f'emo {emo!r}: expected Act, Val, Dom joined in that order, or Class')
    if tuple(out) != tuple(a for a in CSV_ORDER if a in out):
        raise UserError(f'emo {emo!r}: attributes go in the order Act, Val, Dom')
    return tuple(out)


def check_targets(emo, classes):
    """A ModelSpec's emo and classes agree: the classes are given for Class only, known letters, at least two."""
    if emo == CLASS:
        if not classes or len(classes) < 2 or len(set(classes)) != len(classes):
            raise UserError(f'emo Class needs two or more distinct classes, not {classes!r}')
        for c in classes:
            if not (isinstance(c, str) and len(c) == 1 and c.isupper()) or c in ('O', 'X'):
                raise UserError(f'class {c!r}: expected one capital letter other than O and X')
        return
    attributes_of(emo)
    if classes:
        raise UserError(f'emo {emo!r} takes no classes (they are for -emo Class)')


def training_objective(emo, train_rows, path, classes=None, weighted=True, population=False):
    """The objective a run trains: -emo's attributes; for Class the classes (--classes, else those of the challenge's
    eight in Train) and, when weighted, inverse-frequency weights from the Train rows."""
    if emo != CLASS:
        return Regression(attributes_of(emo), population)
    objective = Classification(choose_classes(train_rows, classes, path))
    if weighted:
        y = objective.targets(objective.select(train_rows, path, 'Train'))
        objective.class_weights = inverse_frequency_weights(y, objective.outputs)
    return objective


def objective_of(spec, **training):
    """The objective of a ModelSpec; `training` options (class_weights, population) matter to the loss only."""
    if spec.task == 'chunk':
        return Curves(attributes_of(spec.emo), training.get('population', False))
    if spec.emo == CLASS:
        return Classification(tuple(spec.classes), training.get('class_weights'))
    return Regression(attributes_of(spec.emo), training.get('population', False))


# ----------------------------------------------------------------------------------
# regression of attributes on the 1..7 scale

class Regression:
    """One or more attributes, each a z-scored label (the NormTerm's mean and std); the loss is 1 - CCC (the mean
    over attributes); validation is the reference's: the mean over validation batches of the loss, lower is better."""
    metric, higher_is_better = 'loss', False
    per_chunk = False  # the loss takes the network's (B,) or (B, k) utterance outputs

    def __init__(self, attributes, population=False):
        self.attributes = tuple(attributes)
        self.name = ''.join(self.attributes)
        self.columns = [LABEL_COLUMN[a] for a in self.attributes]
        self.outputs = len(self.attributes)
        self.population = population  # the Keras recipe's CCC loss: population variances

    def select(self, rows, path, split):
        """The rows that take part (all); a row without a label is an error, as in the reference."""
        for col in self.columns:
            if col not in rows.columns:
                raise UserError(f'{path}: expected a column {col!r} for -emo {self.name}')
            bad = ~np.isfinite(rows[col].to_numpy(dtype=np.float64))
            if bad.any():
                first = ', '.join(rows['FileName'].astype(str).to_numpy()[bad][:3])
                raise UserError(f'{path}: {bad.sum()} rows of split {split!r} have no {col} label (first: {first})')
        return rows

    def truth(self, rows):
        """attribute -> (N,) raw 1..7 labels."""
        return {a: rows[c].to_numpy(dtype=np.float64) for a, c in zip(self.attributes, self.columns)}

    def targets(self, rows, norm):
        """(N,) float32 z-scores, or (N, k) for k attributes."""
        z = np.stack([norm.norm_label(y, a) for a, y in self.truth(rows).items()], axis=1).astype(np.float32)
        return z[:, 0] if self.outputs == 1 else z

    def loss(self, out, y):  # out, y: (B,) or (B, k)
        import torch  # torch is imported where a loss is computed, so that scoring an ONNX model needs none
        if self.outputs == 1:
            return cc_coef(out, y, self.population)
        return torch.stack([cc_coef(out[:, j], y[:, j], self.population) for j in range(self.outputs)]).mean()

    sums_size = 2

    def validation_sums(self, out, y):
        """What one validation batch adds up (summed over batches and ranks): its loss and one batch."""
        return [self.loss(out.float(), y).item(), 1.0]

    def validation_value(self, sums):
        return sums[0] / sums[1]

    def results(self, raw, norm):
        """Network outputs (N,) or (N, k) -> attribute -> (N,) values on the 1..7 scale."""
        raw = np.asarray(raw).reshape(len(raw), -1)
        return {a: norm.denorm_label(raw[:, j], a) for j, a in enumerate(self.attributes)}

    def scores(self, truth, results):
        """testing.py's figures: attribute -> CCC over the whole split."""
        return {f'{a}-CCC': evaluation_metrics(truth[a], results[a]) for a in self.attributes}

    def header(self, spec, iterations, batch_size, epochs=None):
        """testing.py's first lines: the PyTorch reference's."""
        return ['ChunkSeq2One', f'Iterations: {iterations}', f'Batch_Size: {batch_size}', f'Model_Type: {spec.encoder}',
                f'Attention_Type: {spec.head}']

    def report(self, header, time_line, scores):
        """The reference's lines: the header, one {emo}-CCC line per attribute, the time."""
        return header + [f'{k}: {v!r}' for k, v in scores.items()] + [time_line]

    def csv_rows(self, fnames, truth, results):
        """testing.py --out: file,true,pred (one attribute, the reference's) or file,true_Act,pred_Act,..."""
        if self.outputs == 1:
            a = self.attributes[0]
            return ['file', 'true', 'pred'], [[f, repr(float(t)), repr(float(p))]
                                              for f, t, p in zip(fnames, truth[a], results[a])]
        header = ['file'] + [f'{k}_{a}' for a in self.attributes for k in ('true', 'pred')]
        cols = [v for a in self.attributes for v in (truth[a], results[a])]
        return header, [[f] + [repr(float(c[i])) for c in cols] for i, f in enumerate(fnames)]

    def predict_columns(self):
        return list(self.attributes)

    @property
    def attribute(self):
        """The one attribute (the Keras protocol, --subsets, scores one), else None."""
        return self.attributes[0] if self.outputs == 1 else None

    def confusion(self, truth, results):
        """The confusion matrix testing.py --out writes beside its CSV: None, attributes have no classes."""
        return None


# ----------------------------------------------------------------------------------
# categorical emotion

def choose_classes(train_rows, given, path):
    """--classes as given (checked), else the challenge's eight that occur in Train, in that order."""
    if 'EmoClass' not in train_rows.columns:
        raise UserError(f'{path}: expected a column \'EmoClass\' for -emo Class')
    present = set(train_rows['EmoClass'].astype(str))
    if given:
        for c in given:
            if len(c) != 1 or not c.isalpha() or not c.isupper():
                raise UserError(f'--classes {c}: expected one capital letter per class (e.g. --classes A S H N)')
            if c in ('O', 'X'):
                raise UserError(f'--classes {c}: MSP-Podcast uses {c} for "{CLASS_NAMES[c]}", which is not a class to learn')
            if c not in present:
                raise UserError(f'{path}: class {c} has no Train rows (Train has {" ".join(sorted(present))})')
        if len(set(given)) != len(given) or len(given) < 2:
            raise UserError(f'--classes {" ".join(given)}: expected two or more distinct classes')
        return tuple(given)
    classes = tuple(c for c in CHALLENGE_CLASSES if c in present)
    if len(classes) < 2:
        raise UserError(f'{path}: Train has {len(classes)} of the classes {" ".join(CHALLENGE_CLASSES)} '
                        f'(found {" ".join(sorted(present))}); pass --classes')
    return classes


def inverse_frequency_weights(y, k):
    """(k,) weights of the classes, inversely proportional to their Train counts, mean 1 over the Train rows."""
    counts = np.bincount(y, minlength=k).astype(np.float64)
    return (len(y) / (k * counts)).tolist()


def confusion(y_true, y_pred, k):
    """(k, k) counts: row the true class, column the predicted one."""
    return np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), minlength=k * k).reshape(k, k)


def macro_f1(cm):
    """The mean F1 over the classes present in the true labels (a class never predicted scores 0)."""
    tp = np.diag(cm).astype(np.float64)
    true, pred = cm.sum(1), cm.sum(0)
    present = true > 0
    f1 = np.divide(2 * tp, true + pred, out=np.zeros_like(tp), where=(true + pred) > 0)
    return float(f1[present].mean())


class Classification:
    """One class per utterance (the EmoClass letters of `classes`, in order): logits (B, K); cross-entropy, weighted
    by inverse Train class frequency unless `class_weights` is None; validation is the macro-F1 over the whole
    validation split, higher is better."""
    metric, higher_is_better = 'macro_f1', True
    name, columns = CLASS, ['EmoClass']
    per_chunk = False
    header = Regression.header

    def __init__(self, classes, class_weights=None):
        self.classes = tuple(classes)
        self.outputs = len(self.classes)
        self.class_weights = class_weights  # (K,) list or None
        self._w = None

    def select(self, rows, path, split=None):
        """The rows of the chosen classes; the others (O, X, classes left out) take part in no split."""
        if 'EmoClass' not in rows.columns:
            raise UserError(f'{path}: expected a column \'EmoClass\' for -emo Class')
        kept = rows[rows['EmoClass'].astype(str).isin(self.classes)]
        return require_rows(kept, path, split, f'of the classes {" ".join(self.classes)}')

    def truth(self, rows):
        return {CLASS: rows['EmoClass'].astype(str).to_numpy()}

    def targets(self, rows, norm=None):
        """(N,) int64 class indices."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[c] for c in self.truth(rows)[CLASS]], dtype=np.int64)

    def loss(self, out, y):  # out: (B, K) logits, y: (B,) class indices
        import torch
        import torch.nn.functional as F
        w = None
        if self.class_weights is not None:
            if self._w is None or self._w.device != out.device:
                self._w = torch.tensor(self.class_weights, dtype=out.dtype, device=out.device)
            w = self._w
        # with weights the mean divides by the batch's sum of weights: over the global batch under torchrun
        return F.cross_entropy(out.float(), y, weight=w)

    @property
    def sums_size(self):
        return self.outputs ** 2

    def validation_sums(self, out, y):
        """The batch's confusion counts (K*K), summed over batches and ranks."""
        return confusion(y.cpu().numpy(), out.argmax(1).cpu().numpy(), self.outputs).reshape(-1).tolist()

    def validation_value(self, sums):
        return macro_f1(np.asarray(sums).reshape(self.outputs, self.outputs))

    def results(self, raw, norm=None):
        """Logits (N, K) -> 'Class' (N,) letters and 'p_<c>' (N,) probabilities."""
        z = np.asarray(raw, dtype=np.float64)  # (N, K)
        e = np.exp(z - z.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)  # softmax in float64
        out = {CLASS: np.array(self.classes)[p.argmax(1)]}
        out.update({f'p_{c}': p[:, i] for i, c in enumerate(self.classes)})
        return out

    def confusion(self, truth, results):
        index = {c: i for i, c in enumerate(self.classes)}
        return confusion([index[c] for c in truth[CLASS]], [index[c] for c in results[CLASS]], self.outputs)

    def scores(self, truth, results):
        cm = self.confusion(truth, results)
        true = cm.sum(1)
        recall = np.diag(cm)[true > 0] / true[true > 0]
        return {'Class-F1': macro_f1(cm), 'Class-UAR': float(recall.mean()),
                'Class-Accuracy': float(np.trace(cm) / cm.sum())}

    def report(self, header, time_line, scores):
        return header + [time_line] + [f'{k}: {v!r}' for k, v in scores.items()]

    def csv_rows(self, fnames, truth, results):
        """file,true,pred,p_A,..."""
        probs = [f'p_{c}' for c in self.classes]
        rows = [[f, t, p] + [repr(float(results[k][i])) for k in probs]
                for i, (f, t, p) in enumerate(zip(fnames, truth[CLASS], results[CLASS]))]
        return ['file', 'true', 'pred'] + probs, rows

    def predict_columns(self):
        return [CLASS] + [f'p_{c}' for c in self.classes]

    attribute = None


# ----------------------------------------------------------------------------------
# the emotion ranker's chunk pairs (retrieval follow-up, SPEC-retrieval.md section 2)

class RankerObjective:
    """Preference pairs of one attribute: the network's (B, C', 2) logits f(a_k) - f(b_k) of a batch of sentence
    pairs, every chunk pair with its sentence pair's label (1: a rated higher); cross-entropy over the chunk pairs;
    validation is the macro-F1 over every chunk pair of the epoch's validation sample, higher is better."""
    metric, higher_is_better = 'macro_f1', True
    outputs, sums_size = 2, 4
    class_weights, per_chunk = None, False  # its network's output is already per chunk pair: (B, C', 2)

    def __init__(self, attribute):
        self.attribute = self.name = attribute

    def loss(self, out, y):  # out: (B, C', 2), y: (B,) pair labels
        import torch.nn.functional as F
        k = out.shape[1]
        return F.cross_entropy(out.float().reshape(-1, 2), y.repeat_interleave(k))

    def validation_sums(self, out, y):
        """The batch's 2x2 confusion counts over its chunk pairs (argmax: an exact tie of the logits is class 0)."""
        pred = out.argmax(-1)  # (B, C')
        return confusion(y[:, None].expand_as(pred).reshape(-1).cpu().numpy(), pred.reshape(-1).cpu().numpy(),
                         2).reshape(-1).tolist()

    def validation_value(self, sums):
        return macro_f1(np.asarray(sums).reshape(2, 2))


# ----------------------------------------------------------------------------------
# the seq2seq model's emotion curves (retrieval follow-up, SPEC-retrieval.md sections 4-5)

def rater_stats(values):
    """Each file's raters' values, a list of (R_i,) arrays -> (N,) mean and (N,) population std (scipy.stats.norm.fit's
    estimates)."""
    return (np.array([v.mean() for v in values], dtype=np.float64),
            np.array([v.std() for v in values], dtype=np.float64))


class Curves(Regression):
    """One attribute per chunk, the seq2seq model's (task 'chunk'): the network's (B, C') chunk values, the utterance
    value their mean. Training targets (B, 1 + C') z-scored: the raters' mean, then the chunk curve that
    ranks.generate_chunk_EmoSeq makes of the chunks' ranks and the raters' mean and std; the loss is
    0.5 (1 - CCC) of the utterance values + 0.5 (1 - CCC) of every chunk value. Validation, results and scores are
    the Regression's on the utterance values against the consensus labels (the mean over validation batches of
    1 - CCC, lower is better)."""
    per_chunk = True  # the loss takes the network's (B, C') chunk values

    def __init__(self, attributes, population=False):
        super().__init__(attributes, population)
        if self.outputs != 1:
            raise UserError(f'emo {self.name}: a seq2seq model learns the curve of one attribute (Act, Val or Dom)')

    def curve_targets(self, values, ranks, norm):
        """The raters' values (a list of (R_i,) arrays) and the chunks' ranks (N, C') -> (N, 1 + C') float32 targets,
        z-scored with the attribute's NormTerm."""
        from .retrieval.ranks import generate_chunk_EmoSeq  # torch: training only
        mu, std = rater_stats(values)
        curves = np.stack([generate_chunk_EmoSeq(m, s, r) for m, s, r in zip(mu, std, ranks)])  # (N, C')
        return norm.norm_label(np.concatenate([mu[:, None], curves], axis=1), self.attribute).astype(np.float32)

    def loss(self, out, y):  # out: (B, C') chunk values, y: (B, 1 + C') targets
        return 0.5 * cc_coef(out.mean(1), y[:, 0], self.population) + \
            0.5 * cc_coef(out.reshape(-1), y[:, 1:].reshape(-1), self.population)

    def validation_sums(self, out, y):  # out: (B,) utterance values (the chunks' mean), y: (B,) consensus z-scores
        return [cc_coef(out.float(), y, self.population).item(), 1.0]

    def header(self, spec, iterations, batch_size, epochs=None):
        """testing.py's first lines: the retrieval reference's."""
        return ['EmoRankerSeq_Info', f'Epochs: {epochs if epochs is not None else iterations}',
                f'Batch_Size: {batch_size}', f'Model_Type: {spec.encoder}']

    def report(self, header, time_line, scores):
        """The retrieval reference's lines: the header and the {emo}-CCC line, no time."""
        return header + [f'{k}: {v!r}' for k, v in scores.items()]
