"""Request messages from plain Python values.

``fill(message, values)`` sets a protobuf message's fields from a dict, as
keyword arguments read naturally::

    fill(CreateJobRequest(), {"model": "lathe-demo",
                              "lora": {"rank": 4, "target_modules": ["q_proj"]},
                              "adapter": "full", "metadata": {"team": "nlp"}})

- a nested message is a dict (or the message itself); ``{}`` sets it empty;
- a repeated field is a list, a map field a dict;
- an enum is its full name ("ADAPTER_TYPE_FULL"), the part after the enum's
  prefix in any case ("full"), or its number;
- None leaves a field unset (auto).

Unknown field names and values of the wrong type raise TypeError or
ValueError naming the field's path, before anything is sent.
"""

from google.protobuf import message as _message


def fill(message, values, path=""):
    """Sets `values` (field name -> value) on `message`; returns `message`."""
    for name, value in values.items():
        where = path + name
        field = message.DESCRIPTOR.fields_by_name.get(name)
        if field is None:
            raise TypeError(f"{where}: {message.DESCRIPTOR.full_name} has no field {name!r}")
        if value is None:
            continue
        target = getattr(message, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _fill_map(target, field.message_type.fields_by_name["value"], value, where)
        elif field.label == field.LABEL_REPEATED:
            if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
                raise TypeError(f"{where}: expected a list, got {type(value).__name__}")
            for i, item in enumerate(value):
                if field.message_type is not None:
                    _fill_message(target.add(), item, f"{where}[{i}]")
                else:
                    _append(target, field, item, f"{where}[{i}]")
        elif field.message_type is not None:
            _fill_message(target, value, where)
        else:
            _set(message, field, value, where)
    return message


def enum_value(enum_type, value, where):
    """The number of `value` (a name, a short name or a number) in `enum_type`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        names = enum_type.values_by_name
        prefix = _enum_prefix(enum_type)
        for name in (value, prefix + value.upper().replace("-", "_")):
            if name in names:
                return names[name].number
        short = ", ".join(n[len(prefix):].lower() for n in names if not n.endswith("_UNSPECIFIED"))
        raise ValueError(f"{where}: {value!r} is not a {enum_type.name}: use one of {short}")
    raise TypeError(f"{where}: expected a {enum_type.name} name, got {type(value).__name__}")


def _enum_prefix(enum_type):
    """"JOB_STATUS_" for JobStatus: the zero value's name less UNSPECIFIED."""
    zero = enum_type.values_by_number[0].name
    return zero[: -len("UNSPECIFIED")] if zero.endswith("_UNSPECIFIED") else ""


def _fill_message(target, value, where):
    if isinstance(value, _message.Message):
        if value.DESCRIPTOR is not target.DESCRIPTOR:
            raise TypeError(
                f"{where}: expected a {target.DESCRIPTOR.full_name}, "
                f"got a {value.DESCRIPTOR.full_name}")
        target.CopyFrom(value)
    elif isinstance(value, dict):
        target.SetInParent()
        fill(target, value, where + ".")
    else:
        raise TypeError(
            f"{where}: expected a dict or {target.DESCRIPTOR.full_name}, "
            f"got {type(value).__name__}")


def _fill_map(target, value_field, value, where):
    if not isinstance(value, dict):
        raise TypeError(f"{where}: expected a dict, got {type(value).__name__}")
    for key, item in value.items():
        if value_field.message_type is not None:
            _fill_message(target[key], item, f"{where}[{key!r}]")
        else:
            item = _scalar(value_field, item, f"{where}[{key!r}]")
            try:
                target[key] = item
            except (TypeError, ValueError) as e:
                raise TypeError(f"{where}[{key!r}]: {e}") from None


def _scalar(field, value, where):
    if field.enum_type is not None:
        return enum_value(field.enum_type, value, where)
    return value


def _set(message, field, value, where):
    value = _scalar(field, value, where)
    try:
        setattr(message, field.name, value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{where}: {e}") from None


def _append(target, field, value, where):
    value = _scalar(field, value, where)
    try:
        target.append(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{where}: {e}") from None
