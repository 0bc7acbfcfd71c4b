"""bnviz: train networks with and without Batch Normalization side by side and watch
every layer's distribution, gradients and loss move, live.

    streamlit run app.py

The pages and their order are in ui/navigation.py.
"""

from ui import navigation

navigation.run()
