"""The tag formats other tools read back (adapters/tags.py)."""

from hypothesis import given
from hypothesis import strategies as st

from adapters.tags import tuned_params, tuned_tags

_names = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)
_fields = st.from_regex(r"[a-z_]{1,10}(\.[a-z_]{1,10}){1,2}", fullmatch=True)
_values = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(), st.booleans(),
                    st.text(max_size=20))


@given(st.dictionaries(_names, st.dictionaries(_fields, _values, min_size=1, max_size=4), max_size=5))
def test_tuned_parameters_read_back_as_written(params):
    """A tuning writes each cell's best parameters and a comparison the ones it applied;
    `dae compare --tuned` reads them back: the same cells, fields and values, types included."""
    tags = tuned_tags(params)
    assert all(name.startswith("dae.tuned.") for name in tags)
    assert tuned_params({**tags, "dae.role": "tuning", "mlflow.runName": "x"}) == params
