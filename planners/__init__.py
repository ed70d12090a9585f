"""autoseg.planners"""
