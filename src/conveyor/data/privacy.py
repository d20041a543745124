"""Patient data at rest: DICOM de-identification and source paths kept as salted hashes.

Clinical exports name patients twice: in the DICOM header (PatientName, PatientID, dates, institutions, physicians)
and in the folder and file names. With ``ingest.deidentify`` the raw store keeps each DICOM file with the
identifying elements of the DICOM PS3.15 Annex E basic profile removed, emptied or replaced (UIDs by a salted hash,
so the same study keeps one UID across files), and every private element removed; the pixel data and the image
elements conveyor decodes stay. Unless ``ingest.keep_paths``, a source path is stored as an HMAC of the path under the
workspace's own secret salt: the same path always gives the same name (so a re-run resumes and a corrected labels CSV
finds its files), and nobody without the salt can test a guessed patient name against it.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import posixpath
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigError
from conveyor.workspace import PRIVATE

if TYPE_CHECKING:
    from conveyor.config import Settings

__all__ = ["BASIC_PROFILE", "PathNames", "deidentify_dicom", "group_key", "path_names", "workspace_salt"]

SALT_FILE = "salt"

# Annex E basic profile: what happens to each attribute. X: removed; Z: emptied (a type 2 element stays, empty);
# U: a UID replaced by one derived from it. Every person name (VR PN), and every private element, is removed too.
BASIC_PROFILE: dict[str, str] = {
    **dict.fromkeys(
        [
            "PatientBirthTime", "PatientAge", "PatientSize", "PatientWeight", "PatientAddress",
            "PatientTelephoneNumbers", "PatientMotherBirthName", "PatientBirthName", "OtherPatientIDs",
            "OtherPatientNames", "OtherPatientIDsSequence", "MilitaryRank", "BranchOfService", "MedicalRecordLocator",
            "EthnicGroup", "Occupation", "AdditionalPatientHistory", "PatientComments", "PatientReligiousPreference",
            "CountryOfResidence", "RegionOfResidence", "InstitutionName", "InstitutionAddress",
            "InstitutionalDepartmentName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
            "PhysiciansOfRecord", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName",
            "AdmittingDiagnosesDescription", "DerivationDescription", "StationName", "DeviceSerialNumber",
            "PlateID", "ProtocolName", "StudyDescription", "SeriesDescription", "ImageComments",
            "RequestAttributesSequence", "ReferencedPatientSequence", "ReferencedStudySequence",
            "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime", "SeriesDate", "SeriesTime", "ContentDate",
            "ContentTime", "OverlayDate", "OverlayTime", "CurveDate", "CurveTime", "InstanceCreationDate",
            "InstanceCreationTime", "IssuerOfPatientID", "PatientInsurancePlanCodeSequence", "CurrentPatientLocation",
            "PatientState", "PregnancyStatus", "SmokingStatus", "LastMenstrualDate", "ResponsiblePerson",
            "ResponsibleOrganization", "TextComments", "TextString", "FillerOrderNumberImagingServiceRequest",
            "PlacerOrderNumberImagingServiceRequest", "PerformedProcedureStepID", "PerformedProcedureStepDescription",
            "ScheduledProcedureStepID", "RequestedProcedureID", "ReasonForTheRequestedProcedure",
            "DigitalSignaturesSequence", "OriginalAttributesSequence",
        ],
        "X",
    ),
    **dict.fromkeys(
        [
            "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
            "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ContentCreatorName",
        ],
        "Z",
    ),
    **dict.fromkeys(
        [
            "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
            "ReferencedSOPInstanceUID", "IrradiationEventUID", "StorageMediaFileSetUID",
            "SynchronizationFrameOfReferenceUID", "ConcatenationUID", "DimensionOrganizationUID",
            "MediaStorageSOPInstanceUID",
        ],
        "U",
    ),
}  # fmt: skip

_ROOT = "2.25."  # UIDs from a UUID-sized integer (PS3.5 B.2): no organisation root needed


def workspace_salt(home: Path) -> bytes:
    """The workspace's secret salt (32 random bytes in ``<home>/salt``, readable by its owner only), made once: the
    first process to link its file in place wins, every other reads that one."""
    path = home / SALT_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        draft = home / f".{SALT_FILE}.{os.getpid()}.tmp"
        draft.write_text(secrets.token_hex(32))
        draft.chmod(PRIVATE)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    text = path.read_text().strip()
    try:
        salt = bytes.fromhex(text)
    except ValueError:
        salt = b""
    if len(salt) != 32:
        raise ConfigError(
            f"{path} is damaged (it must hold 64 hex digits): restore it from a backup of the workspace. With "
            "another salt no stored path matches its file again, and every file would be decided anew."
        )
    return salt


class PathNames:
    """How source paths are stored: as they are (``keep``), or as ``path-<HMAC-SHA256 of the path>`` plus the
    file's extension (which says the format and names nobody)."""

    def __init__(self, salt: bytes, keep: bool) -> None:
        self._salt, self._keep = salt, keep

    @property
    def keep(self) -> bool:
        return self._keep

    def stored(self, relpath: str) -> str:
        if self._keep:
            return relpath
        digest = hmac.new(self._salt, relpath.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]
        extension = posixpath.splitext(relpath)[1].lower()
        safe = extension if len(extension) <= 8 and extension[1:].isalnum() else ""
        return f"path-{digest}{safe}"


def group_key(raw: str, salt: bytes) -> str:
    """How a patient, clip or slide ID is stored: ``group-<HMAC-SHA256 of the ID>``. The same ID always gives the same
    key in one workspace (so a new slice of a known patient finds its patient's split), and names nobody."""
    digest = hmac.new(salt, raw.strip().encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]
    return f"group-{digest}"


def path_names(settings: Settings) -> PathNames:
    """How this workspace stores source paths (``ingest.keep_paths``)."""
    keep = settings.ingest.keep_paths
    return PathNames(b"" if keep else workspace_salt(settings.home), keep)


def deidentify_dicom(data: bytes, salt: bytes) -> bytes:
    """``data`` with the basic profile's identifying elements removed, emptied or replaced, and every private element
    removed; recorded as de-identified in the header (PatientIdentityRemoved, DeidentificationMethod).

    Raises:
        ValueError: pydicom cannot read or write it back (the caller keeps no copy of such a file).
    """
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        ds.remove_private_tags()
        _apply_profile(ds, salt)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            _apply_profile(meta, salt)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "PS3.15 E basic profile, private removed (conveyor)"
        out = io.BytesIO()
        ds.save_as(out)
    except Exception as exc:  # pydicom raises anything on a hostile header
        raise ValueError(f"the DICOM file cannot be de-identified: {exc}") from exc
    return out.getvalue()


def _apply_profile(ds: Any, salt: bytes) -> None:
    """Apply :data:`BASIC_PROFILE` to ``ds`` and every dataset nested in its sequences; remove every person name."""
    for element in list(ds):
        keyword = element.keyword
        action = BASIC_PROFILE.get(keyword)
        if action == "X" or (action is None and element.VR == "PN"):
            del ds[element.tag]
        elif action == "Z":
            element.value = None if element.VR == "SQ" else ""
        elif action == "U" and element.value:
            values = element.value if element.VM > 1 else [element.value]
            replaced = [_uid(str(value), salt) for value in values]
            element.value = replaced if element.VM > 1 else replaced[0]
        elif element.VR == "SQ":
            for item in element.value:
                _apply_profile(item, salt)


def _uid(original: str, salt: bytes) -> str:
    """A UID derived from ``original`` under the salt: the same study keeps one UID, and it cannot be reversed."""
    digest = hmac.new(salt, original.encode(), hashlib.sha256).digest()[:16]
    return _ROOT + str(int.from_bytes(digest, "big"))
