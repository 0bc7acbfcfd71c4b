"""bnviz: see what Batch Normalization does inside a network, layer by layer, live.

The engine (everything here but ``live.py``) imports no UI code: it runs the same in a
test, a notebook, the CLI and the Streamlit app.
"""

__version__ = "0.1.0"
