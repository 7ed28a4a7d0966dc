#include "worker/engine/data/rft.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace lathe::engine {
namespace {

const AnswerExtractor kGsm8k;

TEST(RftTest, AnswersAreExtractedAsThePapersRegexAndTheOtherKinds) {
  EXPECT_EQ(ExtractAnswer(kGsm8k, "so 3 boxes\n#### 1,234"), "1234");
  EXPECT_EQ(ExtractAnswer(kGsm8k, "#### -2.5 then #### 7"), "-2.5");
  EXPECT_EQ(ExtractAnswer(kGsm8k, "the answer is 12"), std::nullopt);
  EXPECT_EQ(ExtractAnswer(kGsm8k, "#### ,"), std::nullopt);  // not a number
  EXPECT_EQ(ExtractAnswer(kGsm8k, std::string("#### 5\0#### 6", 13)), "5");
  EXPECT_TRUE(SameAnswer(kGsm8k, "12", "12.0"));
  EXPECT_FALSE(SameAnswer(kGsm8k, "12", "13"));
  const AnswerExtractor last{.kind = "last_number"};
  EXPECT_EQ(ExtractAnswer(last, "3 and 4 make 7, not 1,000.5 or"), "1000.5");
  const AnswerExtractor regex{.kind = "regex", .pattern = "Answer: ([A-D])"};
  EXPECT_EQ(ExtractAnswer(regex, "... Answer: C."), "C");
  const AnswerExtractor exact{.kind = "exact"};
  EXPECT_EQ(ExtractAnswer(exact, "  Paris \n"), "Paris");
  EXPECT_TRUE(ValidateExtractor(regex).ok());
  EXPECT_FALSE(ValidateExtractor({.kind = "regex", .pattern = "(["}).ok());
  EXPECT_NE(ValidateExtractor({.kind = "json"}).message().find("answer_extractor"),
            std::string::npos);
}

TEST(RftTest, AnnotationsAreCheckedAsPythonWouldEvaluateThem) {
  EXPECT_EQ(EvalArithmetic("3*4"), 12);
  EXPECT_EQ(EvalArithmetic("(2+3)*4 - 6/3"), 18);
  EXPECT_EQ(EvalArithmetic("-2**2"), -4);  // ** binds tighter than unary -
  EXPECT_EQ(EvalArithmetic("2**3**2"), 512);  // right-associative
  EXPECT_EQ(EvalArithmetic("7//2"), 3);
  EXPECT_EQ(EvalArithmetic("-7%3"), 2);  // Python's sign rule
  EXPECT_EQ(EvalArithmetic("1/0"), std::nullopt);
  EXPECT_EQ(EvalArithmetic("3x"), std::nullopt);
  EXPECT_EQ(Annotations("a <<3*4=12>> b <<12/2=6>> c << x"),
            (std::vector<std::string>{"3*4=12", "12/2=6"}));
  EXPECT_TRUE(AnnotationsHold("<<3*4=12>> and <<10/3=3.3333>>"));
  EXPECT_FALSE(AnnotationsHold("<<2*5=11>>"));
  EXPECT_FALSE(AnnotationsHold("<<2*5>>"));  // no '='
  EXPECT_TRUE(AnnotationsHold("no annotations"));
  EXPECT_EQ(EditDistance("kitten", "sitting"), 3u);
  EXPECT_EQ(EditDistance("", "abc"), 3u);
}

// METHODS.md §7.2's defining test: for a question with gold 12, of six
// samples the RFT set keeps the gold, one of the two paths with equation
// list A (the later replaces the earlier only when it is farther from the
// other kept paths) and the path with list B; a wrong answer, no answer
// and a wrong annotation are dropped.
TEST(RftTest, TheWorkedSelection) {
  const std::string s1 = "3 boxes of 4: <<3*4=12>> 12 pens.\n#### 12";
  const std::string s2 = "Each of the 3 boxes holds 4, so <<3 * 4 = 12>> twelve.\n#### 12";
  const std::string s3 = "<<3*4=13>> so\n#### 13";
  const std::string s4 = "It is 12 pens.";
  const std::string s5 = "<<2*5=11>> and <<11+1=12>>\n#### 12";
  const std::string s6 = "<<6+6=12>> so\n#### 12";
  // In the table's order s2 meets s1 with nothing else kept: s1 stays.
  EXPECT_EQ(SelectRftPaths(kGsm8k, "12", {s1, s2, s3, s4, s5, s6}, RftDedupe::kEquations),
            (std::vector<std::string>{s1, s6}));
  // With s6 kept first, s2 replaces s1 exactly when it is farther from s6.
  const bool s2_farther = EditDistance(s2, s6) > EditDistance(s1, s6);
  ASSERT_TRUE(s2_farther);  // the texts are chosen so
  EXPECT_EQ(SelectRftPaths(kGsm8k, "12", {s6, s1, s3, s2, s4, s5}, RftDedupe::kEquations),
            (std::vector<std::string>{s6, s2}));
  EXPECT_EQ(SelectRftPaths(kGsm8k, "12", {s6, s2, s1}, RftDedupe::kEquations),
            (std::vector<std::string>{s6, s2}));
  // Without equation dedupe: every correct path (s5's annotation is not
  // checked), or each text once.
  EXPECT_EQ(SelectRftPaths(kGsm8k, "12", {s1, s2, s3, s4, s5, s6, s1}, RftDedupe::kNone),
            (std::vector<std::string>{s1, s2, s5, s6, s1}));
  EXPECT_EQ(SelectRftPaths(kGsm8k, "12", {s1, s2, s1}, RftDedupe::kExact),
            (std::vector<std::string>{s1, s2}));
}

}  // namespace
}  // namespace lathe::engine
