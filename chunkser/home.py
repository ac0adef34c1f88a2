"""Where installed models are looked for: the current folder's (a checkout, where `make pretrained` puts them), then
the per-user folder that `chunkser pretrained` fills when no --dest is given: $CHUNKSER_HOME, else ~/.cache/chunkser
(the convention of TORCH_HOME and HF_HOME), so an installed package finds them from any folder."""
import os

ENV_HOME = 'CHUNKSER_HOME'
NORM_DIR = './NormTerm'  # the z-norm terms' default folder
INSTALL_HINT = 'run `chunkser pretrained` (`make pretrained` in a checkout) to install the released v1.6 models'


def user_home():
    """$CHUNKSER_HOME, else ~/.cache/chunkser."""
    return os.path.expanduser(os.environ.get(ENV_HOME) or os.path.join('~', '.cache', 'chunkser'))


def with_home(search):
    """Model folders of the current directory ('./Models', './trained_model_v1.6', ...), then the same names under
    user_home()."""
    home = user_home()
    return tuple(search) + tuple(os.path.join(home, os.path.normpath(d)) for d in search)


def describe(search):
    """The folders of with_home(search) in a message: './Models or ./trained_model_v1.6 (here or in HOME)'."""
    return f'{" or ".join(search)} (here or in {user_home()})'


def norm_dir_or_home(norm_dir=NORM_DIR):
    """The default ./NormTerm when it is there, else user_home()'s NormTerm when that is; another folder as given."""
    if norm_dir == NORM_DIR and not os.path.isdir(norm_dir):
        home = os.path.join(user_home(), 'NormTerm')
        if os.path.isdir(home):
            return home
    return norm_dir


def install_hint(norm_dir=None):
    """What to do when no model is found: install them, or name the folders (--norm-dir as well when `norm_dir` is
    missing too: one error for both, not one after the other)."""
    both = norm_dir is not None and not os.path.isdir(norm_dir)
    return f'{INSTALL_HINT}, or pass --model-dir DIR' + (' and --norm-dir DIR' if both else '')
