"""bnviz live lab: train networks with and without Batch Normalization side by side and
watch every layer's distribution, gradients and loss move, live.

    streamlit run app.py
"""

import streamlit as st

from ui import lab as lab_ui

st.set_page_config(page_title="bnviz · live lab", page_icon="📈", layout="wide")

lab = lab_ui.init_state()
lab_ui.sidebar_ui()
lab_ui.header_ui()
lab_ui.controls_ui(lab)
lab_ui.live_ui(lab)
lab_ui.share_ui(lab)
