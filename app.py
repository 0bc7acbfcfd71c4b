"""bnviz: train networks with and without Batch Normalization side by side and watch
every layer's distribution, gradients and loss move, live.

    streamlit run app.py
"""

import streamlit as st

from ui import lab as lab_ui


def live_lab() -> None:
    lab = lab_ui.init_state()
    lab_ui.sidebar_ui()
    lab_ui.header_ui()
    lab_ui.controls_ui(lab)
    lab_ui.live_ui(lab)
    lab_ui.share_ui(lab)


st.set_page_config(page_title="bnviz", page_icon="📈", layout="wide")
st.navigation([
    st.Page(live_lab, title="Live lab", icon=":material/science:", default=True),
    st.Page("pages/1_Paper_Figure_1.py", title="Paper Figure 1", icon=":material/article:"),
    st.Page("pages/2_BN_step_by_step.py", title="BN step by step", icon=":material/calculate:"),
    st.Page("pages/3_Does_BN_reduce_covariate_shift.py", title="Does BN really reduce covariate shift?",
            icon=":material/quiz:"),
    st.Page("pages/4_Batch_size_and_alternatives.py", title="Batch size and the alternatives",
            icon=":material/stacked_bar_chart:"),
]).run()
