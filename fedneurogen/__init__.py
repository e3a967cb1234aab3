"""FedNeuroGen: federated cross-modal neuroimaging generation (EEG -> fMRI / fNIRS)."""

__version__ = "0.1.0"
