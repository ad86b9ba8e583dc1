"""Studies: search spaces, study files, the local and Ray backends, the results table."""

from scaling_lab.study.config import StudyConfig
from scaling_lab.study.study_files import load_study, run_dir_for
from scaling_lab.study.runner import run_study

__all__ = ["StudyConfig", "load_study", "run_dir_for", "run_study"]
