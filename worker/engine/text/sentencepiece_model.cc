#include "worker/engine/text/sentencepiece_model.h"

#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>

#include "worker/engine/text/spm_plugin.h"

namespace lathe::engine {
namespace {

// The plugin's entry points, resolved once per process.
struct Plugin {
  decltype(&LatheSpmLoad) load = nullptr;
  decltype(&LatheSpmFree) free = nullptr;
  decltype(&LatheSpmEncode) encode = nullptr;
  decltype(&LatheSpmDecode) decode = nullptr;
  decltype(&LatheSpmVocabSize) vocab_size = nullptr;
  decltype(&LatheSpmPieceToId) piece_to_id = nullptr;
  decltype(&LatheSpmTrainBpe) train_bpe = nullptr;
  std::string error;  // why the plugin is unusable; "" when it is loaded
};

void* OpenPlugin(std::string* tried) {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("LATHE_SPM_PLUGIN"))
    candidates.push_back(env);
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec)
    candidates.push_back((exe.parent_path() / "liblathe_spm.so").string());
  candidates.push_back(LATHE_SPM_BUILD_PATH);
  for (const std::string& path : candidates) {
    if (!std::filesystem::exists(path)) continue;
    // DEEPBIND: sentencepiece binds to its own protobuf first; LOCAL: its
    // symbols stay out of the global scope LibTorch's libprotobuf uses.
    if (void* handle =
            dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND)) {
      return handle;
    }
    *tried += path + ": " + dlerror() + "; ";
  }
  for (const std::string& path : candidates) *tried += path + " ";
  return nullptr;
}

const Plugin& GetPlugin() {
  static const Plugin* plugin = [] {
    auto* p = new Plugin();
    std::string tried;
    void* handle = OpenPlugin(&tried);
    if (handle == nullptr) {
      p->error =
          "cannot open the SentencePiece plugin liblathe_spm.so (tried " +
          tried + ")";
      return p;
    }
    auto symbol = [&](const char* name) { return dlsym(handle, name); };
    p->load = reinterpret_cast<decltype(p->load)>(symbol("LatheSpmLoad"));
    p->free = reinterpret_cast<decltype(p->free)>(symbol("LatheSpmFree"));
    p->encode = reinterpret_cast<decltype(p->encode)>(symbol("LatheSpmEncode"));
    p->decode = reinterpret_cast<decltype(p->decode)>(symbol("LatheSpmDecode"));
    p->vocab_size =
        reinterpret_cast<decltype(p->vocab_size)>(symbol("LatheSpmVocabSize"));
    p->piece_to_id =
        reinterpret_cast<decltype(p->piece_to_id)>(symbol("LatheSpmPieceToId"));
    p->train_bpe =
        reinterpret_cast<decltype(p->train_bpe)>(symbol("LatheSpmTrainBpe"));
    if (!p->load || !p->free || !p->encode || !p->decode || !p->vocab_size ||
        !p->piece_to_id || !p->train_bpe) {
      p->error = "liblathe_spm.so lacks an entry point";
    }
    return p;
  }();
  return *plugin;
}

}  // namespace

std::unique_ptr<SentencePieceModel> SentencePieceModel::Load(
    const std::string& path, std::string* error) {
  const Plugin& plugin = GetPlugin();
  if (!plugin.error.empty()) {
    *error = plugin.error;
    return nullptr;
  }
  void* processor = plugin.load(&path, error);
  if (processor == nullptr) return nullptr;
  return std::unique_ptr<SentencePieceModel>(new SentencePieceModel(processor));
}

SentencePieceModel::~SentencePieceModel() { GetPlugin().free(processor_); }

bool SentencePieceModel::Encode(std::string_view text,
                                std::vector<SpmPiece>* pieces,
                                std::string* error) const {
  return GetPlugin().encode(processor_, text, pieces, error);
}

bool SentencePieceModel::Decode(const std::vector<int>& ids, std::string* text,
                                std::string* error) const {
  return GetPlugin().decode(processor_, &ids, text, error);
}

int32_t SentencePieceModel::vocab_size() const {
  return GetPlugin().vocab_size(processor_);
}

int32_t SentencePieceModel::PieceToId(const std::string& piece) const {
  return GetPlugin().piece_to_id(processor_, &piece);
}

std::string TrainSentencePieceBpe(const std::vector<std::string>& sentences,
                                  int vocab_size, std::string* error) {
  const Plugin& plugin = GetPlugin();
  if (!plugin.error.empty()) {
    *error = plugin.error;
    return "";
  }
  std::string model;
  if (!plugin.train_bpe(&sentences, vocab_size, &model, error)) return "";
  return model;
}

}  // namespace lathe::engine
