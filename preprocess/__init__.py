"""autoseg.preprocess"""
