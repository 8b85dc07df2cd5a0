"""The digits main job: handwritten digits and spoken digit words in all six directions.

Its corpus (scikit-learn digits, espeak-ng speech), judges, pipeline (``native-mm run``),
evaluation (``native-mm eval``) and the notebooks' experiment helpers.
"""
